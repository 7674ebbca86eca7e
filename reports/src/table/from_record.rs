//! A [`RecordView`] (a record of a log in the binary format) into the table's builders, its fields
//! given as its JSON gives them: through the record's own `Serialize` (the schema's, with every
//! `skip_serializing_if` and flattening), so that a field its JSON leaves out is a null here
//! too, and a log in either format makes the same table.

use super::{Builder, Cols, KIND, Layout, Slot};
use mailsim_events::RecordView;
use serde::ser::{self, Impossible, Serialize, SerializeMap, SerializeStruct, Serializer};
use std::fmt;

/// A record whose fields do not fit the table's columns.
#[derive(Debug)]
pub(super) struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

impl serde::de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

/// Add `record` as the next row of `cols`.
pub(super) fn push(cols: &mut Cols<'_>, record: &RecordView<'_>) -> Result<(), Error> {
    record.serialize(Row(cols))
}

/// Refuses the serializer methods that a value of this place cannot call.
macro_rules! refuse {
    ($what:literal; $($name:ident($($arg:ty),*)),* $(,)?) => {$(
        fn $name(self, $(_: $arg),*) -> Result<Self::Ok, Self::Error> {
            Err(Error(format!(
                "{} where {} was expected",
                stringify!($name).trim_start_matches("serialize_"),
                $what
            )))
        }
    )*};
}

/// The compound serializers no place takes.
macro_rules! no_compounds {
    ($what:literal; $($kind:ident),*) => {
        type SerializeSeq = Impossible<Self::Ok, Error>;
        type SerializeTuple = Impossible<Self::Ok, Error>;
        type SerializeTupleStruct = Impossible<Self::Ok, Error>;
        type SerializeTupleVariant = Impossible<Self::Ok, Error>;
        type SerializeStructVariant = Impossible<Self::Ok, Error>;
        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
            Err(Error(format!("a list where {} was expected", $what)))
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
            Err(Error(format!("a tuple where {} was expected", $what)))
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct, Error> {
            Err(Error(format!("a tuple where {} was expected", $what)))
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, Error> {
            Err(Error(format!("a variant where {} was expected", $what)))
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, Error> {
            Err(Error(format!("a variant where {} was expected", $what)))
        }
        fn serialize_newtype_struct<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            value: &T,
        ) -> Result<Self::Ok, Error> {
            value.serialize(self)
        }
        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<Self::Ok, Error> {
            Err(Error(format!("a variant where {} was expected", $what)))
        }
        refuse!($what; serialize_i8(i8), serialize_i16(i16), serialize_i32(i32),
            serialize_i64(i64), serialize_f32(f32), serialize_f64(f64), serialize_char(char),
            serialize_bytes(&[u8]), serialize_unit(), serialize_unit_struct(&'static str),
            serialize_unit_variant(&'static str, u32, &'static str));
        $(no_compounds!(@$kind $what);)*
    };
    (@map $what:literal) => {
        type SerializeMap = Impossible<Self::Ok, Error>;
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
            Err(Error(format!("a map where {} was expected", $what)))
        }
    };
    (@struct $what:literal) => {
        type SerializeStruct = Impossible<Self::Ok, Error>;
        fn serialize_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStruct, Error> {
            Err(Error(format!("a struct where {} was expected", $what)))
        }
    };
}

/// The record: a map of its fields.
struct Row<'c, 'l>(&'c mut Cols<'l>);

impl<'c, 'l> Serializer for Row<'c, 'l> {
    type Ok = ();
    type Error = Error;
    type SerializeMap = RowMap<'c, 'l>;
    no_compounds!("a record"; struct);
    refuse!("a record"; serialize_bool(bool), serialize_u8(u8), serialize_u16(u16),
        serialize_u32(u32), serialize_u64(u64), serialize_str(&str), serialize_none());

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<(), Error> {
        Err(Error("an option where a record was expected".into()))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<RowMap<'c, 'l>, Error> {
        Ok(RowMap {
            cols: self.0,
            key: None,
            detail: serde_json::Map::new(),
        })
    }
}

struct RowMap<'c, 'l> {
    cols: &'c mut Cols<'l>,
    /// The key whose value comes next: where it goes, and its name when no column takes it.
    key: Option<(Option<Slot>, String)>,
    detail: serde_json::Map<String, serde_json::Value>,
}

impl SerializeMap for RowMap<'_, '_> {
    type Ok = ();
    type Error = Error;

    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), Error> {
        self.key = Some(key.serialize(KeyName(self.cols.layout))?);
        Ok(())
    }

    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        let (slot, name) = self
            .key
            .take()
            .ok_or_else(|| Error("a value without key".into()))?;
        let cols = &mut *self.cols;
        match slot {
            Some(Slot::Column(i)) => {
                let name = cols.layout.columns[i].0;
                value.serialize(Value(cols.fill(i)?, name))
            }
            Some(Slot::Reply) => value.serialize(ReplyParts(cols)),
            None => {
                let v = serde_json::to_value(value).map_err(|e| Error(e.to_string()))?;
                self.detail.insert(name, v);
                Ok(())
            }
        }
    }

    fn end(self) -> Result<(), Error> {
        debug_assert!(self.cols.filled(KIND) || self.key.is_none());
        self.cols.end_row(self.detail)
    }
}

/// A field's name: where it goes (its name kept only when no column takes it).
struct KeyName<'l>(&'l Layout);

impl Serializer for KeyName<'_> {
    type Ok = (Option<Slot>, String);
    type Error = Error;
    no_compounds!("a field name"; map, struct);
    refuse!("a field name"; serialize_bool(bool), serialize_u8(u8), serialize_u16(u16),
        serialize_u32(u32), serialize_u64(u64), serialize_none());

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<Self::Ok, Error> {
        Err(Error("an option where a field name was expected".into()))
    }

    fn serialize_str(self, v: &str) -> Result<Self::Ok, Error> {
        Ok(match self.0.slot(v) {
            Some(slot) => (Some(slot), String::new()),
            None => (None, v.to_string()),
        })
    }
}

/// One value of the column `.1`, into its builder (already at this row).
struct Value<'b>(&'b mut Builder, &'static str);

impl Value<'_> {
    fn mismatch(&self, given: &str) -> Error {
        Error(format!(
            "field `{}`: {given} in a column of another type",
            self.1
        ))
    }
}

impl Serializer for Value<'_> {
    type Ok = ();
    type Error = Error;
    no_compounds!("a field's value"; map, struct);

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        match self.0 {
            Builder::Bool(b) => {
                b.push(Some(v));
                Ok(())
            }
            _ => Err(self.mismatch("a bool")),
        }
    }

    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }

    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }

    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }

    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        match self.0 {
            Builder::U64(b) => {
                b.push(Some(v));
                Ok(())
            }
            Builder::U32(b) => match u32::try_from(v) {
                Ok(v) => {
                    b.push(Some(v));
                    Ok(())
                }
                Err(_) => Err(Error(format!("field `{}`: {v} is over 32 bits", self.1))),
            },
            _ => Err(self.mismatch("a number")),
        }
    }

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        match self.0 {
            Builder::Str(b) => {
                b.push_value(v);
                Ok(())
            }
            Builder::Dict(b) => {
                b.push(v);
                Ok(())
            }
            _ => Err(self.mismatch("a string")),
        }
    }

    fn serialize_none(self) -> Result<(), Error> {
        self.0.nulls(1);
        Ok(())
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
}

/// A reply (`reply` of `deferred` and `bounced`), or its absence: into the reply's columns.
struct ReplyParts<'c, 'l>(&'c mut Cols<'l>);

impl<'c, 'l> Serializer for ReplyParts<'c, 'l> {
    type Ok = ();
    type Error = Error;
    type SerializeStruct = Self;
    no_compounds!("a reply"; map);
    refuse!("a reply"; serialize_bool(bool), serialize_u8(u8), serialize_u16(u16),
        serialize_u32(u32), serialize_u64(u64), serialize_str(&str));

    fn serialize_none(self) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
        Ok(self)
    }
}

impl SerializeStruct for ReplyParts<'_, '_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        match self.0.layout.slot(key) {
            Some(Slot::Column(i)) => value.serialize(Value(self.0.fill(i)?, key)),
            _ => Err(Error(format!("a reply with a field `{key}`"))),
        }
    }

    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}
