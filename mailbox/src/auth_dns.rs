//! Where mail-auth's lookups are answered in-process (virtual mode).
//!
//! mail-auth consults a cache before it asks the network. When the environment injects an
//! [`AuthDns`] (fake-dns's in-process zones), every lookup is answered from it (a name outside
//! its set does not exist), so verification never touches a socket and follows scenario time.
//! Without one the caches are empty and mail-auth asks its resolver.

use crate::auth_memo::SignatureMemo;
use mail_auth::{MX, RecordSet, ResolverCache, Txt};
use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// The answers a verifier needs, keyed as mail-auth asks (lower case, trailing dot). `None` as
/// a name: one the source does not hold.
pub trait AuthDns: Send + Sync {
    /// Every name the source holds.
    fn names(&self) -> &HashSet<Box<str>>;
    /// The PTR owner name of each address the source holds.
    fn reverse(&self) -> &HashMap<IpAddr, String>;
    fn txt(&self, name: Option<&str>) -> Txt;
    fn mx(&self, name: Option<&str>) -> RecordSet<MX>;
    fn ipv4(&self, name: Option<&str>) -> RecordSet<Ipv4Addr>;
    fn ipv6(&self, name: Option<&str>) -> RecordSet<Ipv6Addr>;
    fn ptr(&self, name: Option<&str>) -> RecordSet<Box<str>>;
    /// One query as SPF's evaluation asks it (records in text form).
    fn spf_query(&self, name: &str, rr: crate::spf::Rr) -> crate::spf::Answer;
}

/// One of mail-auth's five caches, answering from an [`AuthDns`] (or nothing, in live mode).
pub struct ZoneCache<V> {
    answers: Option<Arc<dyn AuthDns>>,
    /// Signatures verified ahead (TXT only: DKIM keys answered consult it).
    memo: Option<Arc<SignatureMemo>>,
    _value: std::marker::PhantomData<fn() -> V>,
}

impl<V> ZoneCache<V> {
    pub fn new(answers: Option<Arc<dyn AuthDns>>) -> Self {
        ZoneCache {
            answers,
            memo: None,
            _value: std::marker::PhantomData,
        }
    }

    /// The source and the name it holds for a key, if there is a source.
    fn name<Q>(&self, key: &Q) -> Option<(&dyn AuthDns, Option<&str>)>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let answers = self.answers.as_deref()?;
        Some((answers, answers.names().get(key).map(|n| n.as_ref())))
    }
}

/// The four name-keyed caches: each asks the source for its type.
macro_rules! name_cache {
    ($value:ty, |$answers:ident, $name:ident| $get:expr) => {
        name_cache!($value, |$answers, $name, _memo| $get);
    };
    ($value:ty, |$answers:ident, $name:ident, $memo:ident| $get:expr) => {
        impl ResolverCache<Box<str>, $value> for ZoneCache<$value> {
            fn get<Q>(&self, key: &Q) -> Option<$value>
            where
                Box<str>: Borrow<Q>,
                Q: Hash + Eq + ?Sized,
            {
                let ($answers, $name) = self.name(key)?;
                let $memo = self.memo.as_ref();
                Some($get)
            }

            fn remove<Q>(&self, _: &Q) -> Option<$value>
            where
                Box<str>: Borrow<Q>,
                Q: Hash + Eq + ?Sized,
            {
                None
            }

            fn insert(&self, _: Box<str>, _: $value, _: std::time::Instant) {}
        }
    };
}

name_cache!(Txt, |a, name, memo| match (name, memo) {
    // A DKIM key (as fake-dns's answer reads the name), verifying through the memo: the
    // same key from the same first record that parses, else the plain answer.
    (Some(n), Some(memo)) if !n.starts_with("_dmarc.") && n.contains("._domainkey.") => {
        match a.spf_query(n, crate::spf::Rr::Txt) {
            crate::spf::Answer::Records(texts) => crate::auth_memo::consulting_key(&texts, memo),
            _ => None,
        }
        .unwrap_or_else(|| a.txt(name))
    }
    _ => a.txt(name),
});
name_cache!(RecordSet<MX>, |a, name| a.mx(name));
name_cache!(RecordSet<Ipv4Addr>, |a, name| a.ipv4(name));
name_cache!(RecordSet<Ipv6Addr>, |a, name| a.ipv6(name));

impl ResolverCache<IpAddr, RecordSet<Box<str>>> for ZoneCache<RecordSet<Box<str>>> {
    fn get<Q>(&self, key: &Q) -> Option<RecordSet<Box<str>>>
    where
        IpAddr: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let answers = self.answers.as_deref()?;
        Some(answers.ptr(answers.reverse().get(key).map(String::as_str)))
    }

    fn remove<Q>(&self, _: &Q) -> Option<RecordSet<Box<str>>>
    where
        IpAddr: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: IpAddr, _: RecordSet<Box<str>>, _: std::time::Instant) {}
}

/// The five caches mail-auth takes.
pub struct ZoneCaches {
    pub txt: ZoneCache<Txt>,
    pub mx: ZoneCache<RecordSet<MX>>,
    pub ipv4: ZoneCache<RecordSet<Ipv4Addr>>,
    pub ipv6: ZoneCache<RecordSet<Ipv6Addr>>,
    pub ptr: ZoneCache<RecordSet<Box<str>>>,
}

impl ZoneCaches {
    pub fn new(answers: Option<Arc<dyn AuthDns>>) -> Self {
        ZoneCaches {
            txt: ZoneCache::new(answers.clone()),
            mx: ZoneCache::new(answers.clone()),
            ipv4: ZoneCache::new(answers.clone()),
            ipv6: ZoneCache::new(answers.clone()),
            ptr: ZoneCache::new(answers),
        }
    }

    /// DKIM keys answered verify through `memo` (signatures verified ahead of time).
    pub fn with_memo(mut self, memo: Arc<SignatureMemo>) -> Self {
        self.txt.memo = Some(memo);
        self
    }
}
