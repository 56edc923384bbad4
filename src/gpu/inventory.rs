//! What GPUs there are: NVIDIA GPUs read through NVML (`libnvidia-ml`,
//! loaded at run time, so the daemon starts and works without a driver), or
//! GPUs declared on the command line (`--gpu 0:24GiB`), which win when given.

use serde::Serialize;

use super::plan::GIB;

/// Where the inventory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Nvml,
    Declared,
    None,
}

/// A GPU declared with `--gpu INDEX:SIZE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub index: u32,
    pub total: u64,
}

impl Declared {
    /// `0:24GiB`.
    pub fn parse(text: &str) -> Result<Declared, String> {
        let bad = || format!("GPU `{text}`: expected INDEX:SIZE such as `0:24GiB`");
        let (index, size) = text.trim().split_once(':').ok_or_else(bad)?;
        let index = index.trim().parse().map_err(|_| bad())?;
        let total = parse_size(size).map_err(|e| format!("GPU `{text}`: {e}"))?;
        if total == 0 {
            return Err(format!("GPU `{text}`: its memory must be more than 0"));
        }
        Ok(Declared { index, total })
    }
}

/// A memory size: `24GiB`, `1.5GiB`, `512MiB`, `24GB` (read as GiB, as
/// `vram_gb` is), or bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_size = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("`{text}` is not a size (write it as 24GiB, 512MiB or bytes)")),
    };
    let number: f64 =
        number.parse().map_err(|_| format!("`{text}` is not a size (write it as 24GiB, 512MiB or bytes)"))?;
    let bytes = number * unit_size as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("`{text}` is too large"));
    }
    Ok(bytes as u64)
}

/// One GPU as read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub index: u32,
    pub uuid: Option<String>,
    pub name: String,
    pub total: u64,
    /// NVML only.
    pub used: Option<u64>,
    pub free: Option<u64>,
    /// Compute processes on it (host pid, bytes), NVML only.
    pub processes: Vec<(u32, u64)>,
}

/// The source of GPU readings for the life of the daemon.
pub struct Inventory {
    pub source: Source,
    /// In words, for `/health` and `/gpus`: what was found and what is used.
    pub detail: String,
    nvml: Option<nvml_wrapper::Nvml>,
    declared: Vec<Declared>,
}

impl Inventory {
    /// Declared GPUs when given (NVML is still asked, to say what it found);
    /// else NVML's; else none.
    pub fn open(declared: Vec<Declared>) -> Inventory {
        let nvml = nvml_wrapper::Nvml::init().map_err(|e| nvml_error(&e));
        let found = match &nvml {
            Ok(nvml) => match nvml.device_count() {
                Ok(n) => Ok(n),
                Err(e) => Err(nvml_error(&e)),
            },
            Err(e) => Err(e.clone()),
        };
        let (source, detail) = match (&found, declared.is_empty()) {
            (Ok(n), true) if *n > 0 => (Source::Nvml, format!("NVML: {n} GPU(s)")),
            (Ok(n), false) => (Source::Declared, format!("NVML found {n} GPU(s); using the declared GPUs as asked")),
            (Err(e), false) => (Source::Declared, format!("NVML not available ({e}); using the declared GPUs")),
            (Ok(_), true) => (Source::None, "NVML found no GPU, and none was declared (--gpu)".to_string()),
            (Err(e), true) => (Source::None, format!("NVML not available ({e}), and no GPU was declared (--gpu)")),
        };
        let nvml = if source == Source::Nvml { nvml.ok() } else { None };
        Inventory { source, detail, nvml, declared }
    }

    /// The GPUs now. NVML calls block briefly: call it off the async threads.
    pub fn read(&self) -> Vec<Reading> {
        match &self.nvml {
            Some(nvml) => read_nvml(nvml),
            None => self
                .declared
                .iter()
                .map(|d| Reading {
                    index: d.index,
                    uuid: None,
                    name: "declared".into(),
                    total: d.total,
                    used: None,
                    free: None,
                    processes: Vec::new(),
                })
                .collect(),
        }
    }
}

fn nvml_error(e: &nvml_wrapper::error::NvmlError) -> String {
    match e {
        nvml_wrapper::error::NvmlError::LibloadingError(e) => format!("libnvidia-ml.so.1 not loaded: {e}"),
        e => e.to_string(),
    }
}

fn read_nvml(nvml: &nvml_wrapper::Nvml) -> Vec<Reading> {
    use nvml_wrapper::enums::device::UsedGpuMemory;
    let count = nvml.device_count().unwrap_or(0);
    (0..count)
        .filter_map(|index| {
            let device = nvml.device_by_index(index).ok()?;
            let memory = device.memory_info().ok()?;
            let processes = device
                .running_compute_processes()
                .unwrap_or_default()
                .into_iter()
                .map(|p| match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => (p.pid, bytes),
                    UsedGpuMemory::Unavailable => (p.pid, 0),
                })
                .collect();
            Some(Reading {
                index,
                uuid: device.uuid().ok(),
                name: device.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
                total: memory.total,
                used: Some(memory.used),
                free: Some(memory.free),
                processes,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_declared_gpus_read_as_written() {
        assert_eq!(parse_size("24GiB"), Ok(24 * GIB));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 * GIB / 2));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("24gb"), Ok(24 * GIB));
        assert_eq!(parse_size("1000"), Ok(1000));
        for bad in ["", "GiB", "24 parsecs", "-1GiB", "1e999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(Declared::parse("1:80GiB"), Ok(Declared { index: 1, total: 80 * GIB }));
        for bad in ["24GiB", "x:24GiB", "0:", "0:0"] {
            assert!(Declared::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn without_a_driver_the_declared_gpus_are_used_and_the_reason_is_said() {
        let inventory = Inventory::open(vec![Declared { index: 0, total: 24 * GIB }]);
        // No driver on the machines that run the tests; with one, NVML is named.
        assert_eq!(inventory.source, Source::Declared);
        assert!(inventory.detail.contains("NVML"), "{}", inventory.detail);
        assert_eq!(inventory.read()[0].total, 24 * GIB);
        let none = Inventory::open(Vec::new());
        if none.source == Source::None {
            assert!(none.read().is_empty());
            assert!(none.detail.contains("no GPU was declared") || none.detail.contains("found no GPU"));
        }
    }
}
