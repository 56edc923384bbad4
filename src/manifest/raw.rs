//! The manifest as written: the positioned shape of the YAML, before any
//! value is checked.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::{DependencyCondition, Ready, RestartPolicy};

pub(super) type S<T> = Spanned<T>;

/// A duration as written: a number of seconds or a string with a unit.
pub(super) enum RawDuration {
    Seconds(f64),
    Text(String),
}

/// An argv as written: a list, or one string split like a shell would.
pub(super) enum RawCommand {
    List(Vec<String>),
    Line(String),
}

/// `depends_on` as written: a list of names, or a map of name to options.
pub(super) enum RawDependsOn {
    Names(Vec<String>),
    Map(BTreeMap<String, Option<RawDependencySpec>>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDependencySpec {
    pub condition: Option<DependencyCondition>,
}

/// Unknown top-level fields are not refused here but found by
/// [`super::unknown_fields`], so that every one of them is reported along
/// with every other problem.
#[derive(Deserialize)]
pub(super) struct RawManifest {
    pub name: Option<S<String>>,
    pub description: Option<String>,
    pub version: Option<String>,
    pub gpu_required: Option<bool>,
    pub vram_gb: Option<S<f64>>,
    pub gpus: Option<S<i64>>,
    pub compose_file: Option<S<String>>,
    pub compose_project: Option<S<String>>,
    pub command: Option<S<RawCommand>>,
    pub working_dir: Option<S<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub env_file: Option<S<String>>,
    pub ports: Option<Vec<String>>,
    pub port: Option<S<i64>>,
    pub health_endpoint: Option<S<String>>,
    pub health_check_url: Option<S<String>>,
    pub health_command: Option<S<RawCommand>>,
    pub start_timeout: Option<S<RawDuration>>,
    pub health_timeout: Option<S<RawDuration>>,
    pub health_interval: Option<S<RawDuration>>,
    pub health_failures: Option<S<i64>>,
    pub tags: Option<Vec<String>>,
    pub autostart: Option<bool>,
    pub restart: Option<RestartPolicy>,
    pub restart_delay: Option<S<RawDuration>>,
    pub restart_delay_max: Option<S<RawDuration>>,
    pub max_restarts: Option<S<i64>>,
    pub restart_window: Option<S<RawDuration>>,
    pub stop_signal: Option<S<String>>,
    pub stop_timeout: Option<S<RawDuration>>,
    pub depends_on: Option<S<RawDependsOn>>,
    pub priority: Option<i32>,
    pub pinned: Option<bool>,
    pub ready: Option<S<Ready>>,
}

// The types above accept either of two YAML shapes. They are written as
// visitors, not `#[serde(untagged)]`, because untagged buffering would turn
// scalars such as `8001` or `true` inside a list into numbers and booleans.

macro_rules! two_shapes {
    ($ty:ident, $expecting:literal, { $($method:item)* }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    $($method)*
                }
                d.deserialize_any(V)
            }
        }
    };
}

fn seq_of_strings<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Vec<String>, A::Error> {
    let mut items = Vec::new();
    while let Some(item) = seq.next_element::<String>()? {
        items.push(item);
    }
    Ok(items)
}

two_shapes!(RawDuration, "a number of seconds or a duration such as \"500ms\" or \"2m\"", {
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
        Ok(RawDuration::Seconds(v as f64))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
        Ok(RawDuration::Seconds(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawDuration, E> {
        Ok(RawDuration::Seconds(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
        Ok(RawDuration::Text(v.to_string()))
    }
});

two_shapes!(RawCommand, "a list of arguments or a command line", {
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawCommand, E> {
        Ok(RawCommand::Line(v.to_string()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawCommand, A::Error> {
        seq_of_strings(seq).map(RawCommand::List)
    }
});

two_shapes!(RawDependsOn, "a list of service names or a map of name to {condition: started|healthy}", {
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawDependsOn, A::Error> {
        seq_of_strings(seq).map(RawDependsOn::Names)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDependsOn, A::Error> {
        let mut deps = BTreeMap::new();
        while let Some((name, spec)) = map.next_entry::<String, Option<RawDependencySpec>>()? {
            deps.insert(name, spec);
        }
        Ok(RawDependsOn::Map(deps))
    }
});
