//! `POST /hooks/{name}/test`, `nanny webhook test NAME`: deliver a test
//! event to one hook now, through its queue, and say how it went.

use crate::daemon::Daemon;
use crate::daemon::views::HookTest;
use crate::error::Error;

pub async fn test(d: &Daemon, name: &str) -> Result<HookTest, Error> {
    let outcome =
        d.hooks.test(name).await.ok_or_else(|| Error::NoSuchHook { name: name.to_string(), known: d.hooks.names() })?;
    let hook = name.to_string();
    Ok(match outcome {
        Ok(()) => HookTest { message: format!("test event delivered to '{name}'"), hook, delivered: true, error: None },
        Err(e) => HookTest {
            message: format!("test delivery to '{name}' failed: {e}"),
            hook,
            delivered: false,
            error: Some(e),
        },
    })
}
