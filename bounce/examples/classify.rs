//! Print the MIME parts and the classification of the message files given as arguments.
use mail_parser::MimeHeaders;
fn main() {
    for path in std::env::args().skip(1) {
        let raw = std::fs::read(&path).unwrap_or_default();
        if let Some(m) = mail_parser::MessageParser::default().parse(&raw[..]) {
            for (i, p) in m.parts.iter().enumerate() {
                let ct = p
                    .content_type()
                    .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or_default()));
                let kind = match &p.body {
                    mail_parser::PartType::Text(_) => "text",
                    mail_parser::PartType::Html(_) => "html",
                    mail_parser::PartType::Binary(_) => "binary",
                    mail_parser::PartType::InlineBinary(_) => "inline",
                    mail_parser::PartType::Message(_) => "message",
                    mail_parser::PartType::Multipart(_) => "multipart",
                };
                eprintln!("part {i}: {ct:?} {kind}");
            }
        }
        for c in mailsim_bounce::classify_message(&raw) {
            println!(
                "{path}: {} {} {} [{}] {}",
                c.recipient,
                c.reason,
                c.status,
                c.why,
                c.diagnostic.chars().take(200).collect::<String>()
            );
        }
    }
}
