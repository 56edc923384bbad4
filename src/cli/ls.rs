//! `nanny ls` (with filters) and `nanny rediscover`.

use futures_util::future::join_all;
use serde_json::Value;

use super::Failure;
use super::answers::{Rediscovered, ServiceList, Status, Summary};
use super::control::service_path;
use super::output::print_json;
use super::render::{invalid_text, services_table};
use crate::client::{Client, typed};

/// `ls` filters; all given must hold.
pub struct Only {
    pub status: Option<String>,
    pub tag: Option<String>,
    pub gpu: bool,
}

impl Only {
    fn keeps(&self, s: &Summary) -> bool {
        self.status.as_ref().is_none_or(|status| s.status.as_str() == status)
            && self.tag.as_ref().is_none_or(|tag| s.tags.contains(tag))
            && (!self.gpu || s.gpu_required)
    }
}

pub async fn list(client: &Client, json: bool, only: Only) -> Result<(), Failure> {
    let mut answer = client.get("/services").await?;
    let list: ServiceList = typed(answer.clone())?;
    if json {
        if let Some(services) = answer["services"].as_array_mut() {
            services.retain(|s| typed::<Summary>(s.clone()).is_ok_and(|s| only.keeps(&s)));
        }
        print_json(&answer);
        return Ok(());
    }
    let kept: Vec<Summary> = list.services.into_iter().filter(|s| only.keeps(s)).collect();
    // Uptime, pid, health and restarts come with each service's status.
    let statuses = join_all(kept.iter().map(|s| async {
        let answer = client.get(&service_path(&s.name, "/status")).await.ok()?;
        typed::<Status>(answer).ok()
    }))
    .await;
    let rows: Vec<(Summary, Option<Status>)> = kept.into_iter().zip(statuses).collect();
    print!("{}", services_table(&rows));
    if let Some(holder) = &list.gpu_service_running {
        println!("\nGPU held by: {holder}");
    }
    print!("{}", invalid_text(&list.invalid));
    Ok(())
}

pub async fn rediscover(client: &Client, json: bool) -> Result<(), Failure> {
    let answer: Value = client.post("/rediscover", None).await?;
    if json {
        print_json(&answer);
        return Ok(());
    }
    let report: Rediscovered = typed(answer)?;
    let names = |names: &[String]| if names.is_empty() { "-".to_string() } else { names.join(", ") };
    println!("added:   {}", names(&report.added));
    println!("removed: {}", names(&report.removed));
    for changed in &report.changed {
        println!("changed: {}: {}", changed.name, changed.note);
    }
    println!("total:   {}", report.total);
    print!("{}", invalid_text(&report.invalid));
    Ok(())
}
