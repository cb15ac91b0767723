//! `[[model]]`: a local reward model, TorchScript plus a Hugging Face `tokenizer.json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigProblem;

/// A local reward model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    /// Name used by profile components (`scorer = "rm"`).
    pub name: String,
    /// The TorchScript file.
    pub path: PathBuf,
    /// The Hugging Face `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// What the model outputs and how it becomes a reward.
    pub kind: ModelKind,
    /// `cpu` or `cuda:N`.
    pub device: Device,
    /// `f32` or `bf16` on CPU; `f32`, `bf16` or `f16` on CUDA.
    pub dtype: Dtype,
    /// Padded tokens per forward pass (batch size × longest sequence); 0: chosen by device
    /// ([`ModelConfig::batch_token_budget`]).
    pub max_batch_tokens: usize,
    /// Longest sequence the model sees, special tokens included; longer inputs are truncated on
    /// `truncation_side`. Must not exceed the model's position embeddings (checked at load).
    pub max_length: usize,
    /// Which end of a too-long input is cut (`left`, `right`), or `none`: a too-long input fails
    /// alone with `input_too_long`.
    pub truncation_side: TruncationSide,
    /// How long a request may wait for more to fill its batch.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Scalar models: how prompt and response become the model's text; `{prompt}` and
    /// `{response}` are replaced. `{prompt}` is the conversation as `role: content` lines.
    /// Embedding models embed the response and the reference as they are.
    pub template: String,
    /// Embedding models: how token vectors become one vector.
    pub pooling: Pooling,
    /// Embedding models: L2-normalise vectors before the cosine.
    pub normalize: bool,
    /// Torch intra-op threads per replica (0: chosen at start: one less than the cores available,
    /// shared among replicas, at least 1; measured in docs/benchmarks-torch.md).
    pub threads: usize,
    /// Model replicas, each on its own OS thread.
    pub replicas: usize,
    /// Requests waiting for a batch, at most; more are refused (admission, not buffering).
    pub queue_capacity: usize,
    /// Tokens waiting for a batch below which workers take more jobs for this model; 0: two
    /// full batches per replica ([`ModelConfig::admit_token_budget`]). Enough that a full batch
    /// is ready whenever a replica is, and no more: past it, jobs wait in the queue, where any
    /// worker may take them.
    pub admit_tokens: usize,
    /// Feed `token_type_ids` (zeros) as a third input, for BERT-style models traced with it.
    pub token_type_ids: bool,
    /// Whether the tokenizer adds its special tokens (its post-processor: BOS, `[CLS]`/`[SEP]`, …)
    /// around each text. `false` for texts that already hold them, as OpenRLHF's queries do (the
    /// chat template and BOS written as text; its reward server tokenizes with
    /// `add_special_tokens=False`).
    pub add_special_tokens: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            path: PathBuf::new(),
            tokenizer: PathBuf::new(),
            kind: ModelKind::Scalar,
            device: Device::Cpu,
            dtype: Dtype::F32,
            max_batch_tokens: 0,
            max_length: 512,
            truncation_side: TruncationSide::Left,
            max_wait: Duration::from_millis(2),
            template: "{prompt}\nassistant: {response}".into(),
            pooling: Pooling::Mean,
            normalize: true,
            threads: 0,
            replicas: 1,
            queue_capacity: 4096,
            admit_tokens: 0,
            token_type_ids: false,
            add_special_tokens: true,
        }
    }
}

/// Where a model runs: written `"cpu"` or `"cuda:N"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    /// The CPU.
    #[default]
    Cpu,
    /// The CUDA device with this index.
    Cuda(usize),
}

impl Device {
    /// Whether this is a CUDA device.
    pub fn is_cuda(self) -> bool {
        matches!(self, Self::Cuda(_))
    }

    /// The dtypes a model may run in on this device.
    pub fn dtypes(self) -> &'static [Dtype] {
        match self {
            Self::Cpu => &[Dtype::F32, Dtype::Bf16],
            Self::Cuda(_) => &[Dtype::F32, Dtype::Bf16, Dtype::F16],
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    /// Parses `"cpu"` or `"cuda:N"`.
    ///
    /// # Errors
    /// A message naming the value and the forms allowed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "cpu" {
            return Ok(Self::Cpu);
        }
        s.strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(Self::Cuda)
            .ok_or_else(|| format!("{s:?} is not allowed; use \"cpu\" or \"cuda:N\""))
    }
}

impl TryFrom<String> for Device {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Device> for String {
    fn from(d: Device) -> Self {
        d.to_string()
    }
}

/// The floating-point type a model's parameters run in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    /// 32-bit floats (as the model was saved).
    #[default]
    F32,
    /// bfloat16: on CPUs with AMX or AVX512-BF16, and on CUDA.
    Bf16,
    /// IEEE half precision: CUDA only.
    F16,
}

impl Dtype {
    /// The name as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;

    /// Parses `"f32"`, `"bf16"` or `"f16"`.
    ///
    /// # Errors
    /// A message naming the value and the dtypes allowed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "f16" => Ok(Self::F16),
            other => Err(format!("{other:?} is not allowed; use f32, bf16 or f16")),
        }
    }
}

/// What a reward model outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// One logit per sequence (`[B]` or `[B, 1]`); the reward is the logit.
    #[default]
    Scalar,
    /// Token vectors or a pooled vector; the reward is the cosine of response and reference.
    Embedding,
}

/// Which end of a too-long input is cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncationSide {
    /// Keep the end (the response), cut the start of the prompt.
    #[default]
    Left,
    /// Keep the start.
    Right,
    /// Cut nothing: an input longer than `max_length` fails alone (`input_too_long`).
    None,
}

/// How token vectors become one vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over non-padding tokens.
    #[default]
    Mean,
    /// The first token.
    Cls,
}

/// `max_batch_tokens` chosen for a CPU replica: on CPU, batches of about two thousand tokens
/// keep their activations in cache and run faster per token than larger ones
/// (docs/benchmarks-torch.md).
pub const CPU_BATCH_TOKENS: usize = 2048;
/// `max_batch_tokens` chosen for a GPU replica: large batches keep the GPU busy.
pub const GPU_BATCH_TOKENS: usize = 16_384;

impl ModelConfig {
    /// The padded-token budget of one forward pass: `max_batch_tokens`, or when it is 0,
    /// [`CPU_BATCH_TOKENS`] on CPU and [`GPU_BATCH_TOKENS`] on CUDA, raised to `max_length` so
    /// that a full-length input fits.
    pub fn batch_token_budget(&self) -> usize {
        if self.max_batch_tokens != 0 {
            return self.max_batch_tokens;
        }
        let by_device = if self.device == Device::Cpu {
            CPU_BATCH_TOKENS
        } else {
            GPU_BATCH_TOKENS
        };
        by_device.max(self.max_length)
    }

    /// Tokens waiting for a batch below which workers take more jobs: `admit_tokens`, or
    /// when 0, two batches' budget ([`ModelConfig::batch_token_budget`]) per replica.
    pub fn admit_token_budget(&self) -> usize {
        if self.admit_tokens != 0 {
            return self.admit_tokens;
        }
        2 * self.batch_token_budget() * self.replicas.max(1)
    }
}

/// Largest `max_batch_tokens` accepted (a padded batch of this many tokens must fit in memory).
const MAX_BATCH_TOKENS: usize = 1 << 22;
/// Longest `max_wait` accepted.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// Most intra-op threads accepted per replica.
const MAX_THREADS: usize = 1024;

/// `{name}` placeholders of a template other than `{prompt}` and `{response}`.
fn unknown_placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let tail = &rest[start..];
        match tail.find('}') {
            Some(end) => {
                let name = &tail[..=end];
                let inner = &name[1..name.len() - 1];
                let looks_like_placeholder = !inner.is_empty()
                    && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if looks_like_placeholder && name != "{prompt}" && name != "{response}" {
                    out.push(name);
                }
                rest = &tail[end + 1..];
            }
            None => break,
        }
    }
    out
}

impl ModelConfig {
    pub(crate) fn problems(&self, path: &str, base: &Path, p: &mut Vec<ConfigProblem>) {
        if self.name.is_empty() {
            p.push(ConfigProblem::new(
                format!("{path}.name"),
                "must not be empty",
            ));
        }
        for (key, file) in [("path", &self.path), ("tokenizer", &self.tokenizer)] {
            let resolved = if file.is_absolute() {
                file.clone()
            } else {
                base.join(file)
            };
            if file.as_os_str().is_empty() {
                p.push(ConfigProblem::new(format!("{path}.{key}"), "must be set"));
            } else if !resolved.is_file() {
                p.push(ConfigProblem::new(
                    format!("{path}.{key}"),
                    format!("no file at {}", resolved.display()),
                ));
            }
        }
        let allowed = self.device.dtypes();
        if !allowed.contains(&self.dtype) {
            let names: Vec<&str> = allowed.iter().map(|d| d.as_str()).collect();
            p.push(ConfigProblem::new(
                format!("{path}.dtype"),
                format!(
                    "{:?} is not allowed on {}; use one of {}",
                    self.dtype.as_str(),
                    self.device,
                    names.join(", ")
                ),
            ));
        }
        if self.max_length < 2 {
            p.push(ConfigProblem::new(
                format!("{path}.max_length"),
                "must be at least 2",
            ));
        }
        if self.max_batch_tokens != 0 && self.max_batch_tokens < self.max_length {
            p.push(ConfigProblem::new(
                format!("{path}.max_batch_tokens"),
                format!(
                    "{} is less than max_length ({}); one full-length input must fit",
                    self.max_batch_tokens, self.max_length
                ),
            ));
        }
        if !self.template.contains("{response}") {
            p.push(ConfigProblem::new(
                format!("{path}.template"),
                "must contain {response}",
            ));
        }
        for unknown in unknown_placeholders(&self.template) {
            p.push(ConfigProblem::new(
                format!("{path}.template"),
                format!("unknown placeholder {unknown}; allowed: {{prompt}}, {{response}}"),
            ));
        }
        if self.max_batch_tokens > MAX_BATCH_TOKENS {
            p.push(ConfigProblem::new(
                format!("{path}.max_batch_tokens"),
                format!("{} is more than {MAX_BATCH_TOKENS}", self.max_batch_tokens),
            ));
        }
        if self.max_wait > MAX_WAIT {
            p.push(ConfigProblem::new(
                format!("{path}.max_wait"),
                format!(
                    "{} is too long; a batch may wait at most 1s (a few ms is usual)",
                    humantime::format_duration(self.max_wait)
                ),
            ));
        }
        if self.threads > MAX_THREADS {
            p.push(ConfigProblem::new(
                format!("{path}.threads"),
                format!(
                    "{} is more than {MAX_THREADS}; use 0 for the measured default",
                    self.threads
                ),
            ));
        }
        if self.replicas == 0 {
            p.push(ConfigProblem::new(
                format!("{path}.replicas"),
                "must be at least 1",
            ));
        }
        if self.queue_capacity == 0 {
            p.push(ConfigProblem::new(
                format!("{path}.queue_capacity"),
                "must be at least 1",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(cfg: &ModelConfig) -> Vec<String> {
        let mut p = Vec::new();
        cfg.problems("model[0]", Path::new("/nonexistent"), &mut p);
        p.into_iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn every_field_is_checked_with_its_key_path() {
        let cfg = ModelConfig {
            dtype: Dtype::F16,
            max_length: 1,
            template: "{promt} {response}".into(),
            max_wait: Duration::from_secs(5),
            threads: 5000,
            replicas: 0,
            queue_capacity: 0,
            ..ModelConfig::default()
        };
        let p = problems(&cfg).join("\n");
        for key in [
            "model[0].name: must not be empty",
            "model[0].path: must be set",
            "model[0].tokenizer: must be set",
            "model[0].dtype: \"f16\" is not allowed on cpu; use one of f32, bf16",
            "model[0].max_length: must be at least 2",
            "model[0].template: unknown placeholder {promt}",
            "model[0].max_wait: 5s is too long",
            "model[0].threads: 5000 is more than 1024",
            "model[0].replicas: must be at least 1",
            "model[0].queue_capacity: must be at least 1",
        ] {
            assert!(p.contains(key), "missing {key:?} in\n{p}");
        }
    }

    #[test]
    fn the_batch_budget_follows_the_device_unless_set() {
        let cpu = ModelConfig::default();
        assert_eq!(cpu.batch_token_budget(), CPU_BATCH_TOKENS);
        let long = ModelConfig {
            max_length: 8192,
            ..ModelConfig::default()
        };
        assert_eq!(long.batch_token_budget(), 8192);
        assert!(
            problems(&long)
                .iter()
                .all(|p| !p.contains("max_batch_tokens"))
        );
        let gpu = ModelConfig {
            device: Device::Cuda(0),
            ..ModelConfig::default()
        };
        assert_eq!(gpu.batch_token_budget(), GPU_BATCH_TOKENS);
        let set = ModelConfig {
            max_batch_tokens: 1000,
            ..gpu
        };
        assert_eq!(set.batch_token_budget(), 1000);
        let too_small = ModelConfig {
            max_batch_tokens: 100,
            ..ModelConfig::default()
        };
        assert!(
            problems(&too_small)
                .iter()
                .any(|p| p
                    .starts_with("model[0].max_batch_tokens: 100 is less than max_length (512)")),
            "{:?}",
            problems(&too_small)
        );
    }

    #[test]
    fn device_and_dtype_parse_from_their_written_forms() {
        let cfg: ModelConfig =
            toml::from_str("device = \"cuda:1\"\ndtype = \"f16\"").expect("parses");
        assert_eq!((cfg.device, cfg.dtype), (Device::Cuda(1), Dtype::F16));
        assert!(problems(&cfg).iter().all(|p| !p.contains("dtype")));
        assert_eq!(cfg.device.to_string(), "cuda:1");
        let text = toml::to_string(&cfg).expect("serialises");
        assert!(
            text.contains("device = \"cuda:1\"\ndtype = \"f16\""),
            "{text}"
        );
        for (text, want) in [
            (
                "device = \"gpu\"",
                "\"gpu\" is not allowed; use \"cpu\" or \"cuda:N\"",
            ),
            ("device = \"cuda:x\"", "\"cuda:x\" is not allowed"),
            ("dtype = \"f64\"", "f64"),
        ] {
            let err = toml::from_str::<ModelConfig>(text)
                .expect_err(text)
                .to_string();
            assert!(err.contains(want), "{want:?} not in {err}");
        }
    }

    #[test]
    fn truncation_side_none_parses() {
        let cfg: ModelConfig =
            toml::from_str("truncation_side = \"none\"\nkind = \"embedding\"").expect("parses");
        assert_eq!(cfg.truncation_side, TruncationSide::None);
        assert_eq!(cfg.kind, ModelKind::Embedding);
        assert!(unknown_placeholders("{prompt}\nassistant: {response} {\"json\": 1}").is_empty());
    }
}
