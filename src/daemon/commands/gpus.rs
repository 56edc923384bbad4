//! `GET /gpus`, `nanny gpus`: the GPUs as the arbiter sees them, their
//! holders, and the starts waiting for room.

use crate::daemon::Daemon;
use crate::daemon::views::{GpuHolderView, GpuView, GpusView, QueuedView};

pub fn run(d: &Daemon) -> GpusView {
    let board = d.arbiter.board();
    let gpus = board
        .gpus
        .iter()
        .map(|(reading, free, foreign)| GpuView {
            index: reading.index,
            uuid: reading.uuid.clone(),
            name: reading.name.clone(),
            total_bytes: reading.total,
            used_bytes: reading.used,
            free_bytes: *free,
            foreign_bytes: *foreign,
            holders: board
                .holders
                .iter()
                .filter(|(_, h)| h.plan.gpus.contains(&reading.index))
                .map(|(service, h)| GpuHolderView {
                    service: service.clone(),
                    vram_bytes: h.plan.vram,
                    measured_bytes: h.plan.measured,
                    since: h.since,
                    over: h.over,
                })
                .collect(),
        })
        .collect();
    let queue = board
        .queue
        .iter()
        .map(|q| QueuedView {
            service: q.ask.service.clone(),
            vram_bytes: q.ask.vram,
            gpus: q.ask.gpus,
            priority: q.ask.priority,
            since: q.since,
            deadline: q.deadline,
        })
        .collect();
    GpusView {
        policy: board.policy,
        source: board.source,
        detail: board.detail,
        headroom_bytes: board.headroom,
        holder: board.holder,
        gpus,
        queue,
    }
}
