//! The TOML configuration: what is computed. How this process runs (paths, workers) is given by
//! CLI flags. Every option is documented in `config/stockcast.toml`.
//!
//! # Error handling
//! Every error names the file, and the field where one is at fault.
//!
//! Longer than 600 lines: every section's type, default and validation lives here, so each setting
//! and the error naming its field are found in one place (and `config/stockcast.toml` documents
//! them in the same order).

use std::path::{Path, PathBuf};

use dataflows::{Clock, FeatureSpec, PeriodKind};
use serde::{Deserialize, Serialize};

use crate::forecast::Baseline;
use crate::source::files::FileKind;

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Periods, epochs and lateness.
    #[serde(default)]
    pub time: TimeConfig,
    /// Feature windows; each defaults by period.
    #[serde(default)]
    pub features: FeaturesConfig,
    /// Forecasting.
    #[serde(default)]
    pub forecast: ForecastConfig,
    /// The Kafka source and sink of `run`, `load` and the demo.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Order recommendations.
    #[serde(default)]
    pub replenish: ReplenishConfig,
    /// The HTTP server of `run`: metrics, health and the read API.
    #[serde(default)]
    pub http: HttpConfig,
    /// The PostgreSQL inventory mart (a sink of `run`).
    #[serde(default)]
    pub postgres: PostgresConfig,
    /// The Redis lookup cache (a sink of `run`).
    #[serde(default)]
    pub redis: RedisConfig,
    /// Error reporting to Sentry.
    #[serde(default)]
    pub sentry: SentryConfig,
    /// Checkpoints of the worker's state.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// What the worker publishes when one advance closes many epochs.
    #[serde(default)]
    pub output: OutputConfig,
}

/// `[output]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Which forecasts an advance that closes several epochs publishes.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Most changed series (with their feature vectors) a process holds between its workers
    /// and its sinks before the workers stop reading.
    #[serde(default = "default_max_held_series")]
    pub max_held_series: usize,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            catch_up: CatchUp::default(),
            max_held_series: default_max_held_series(),
        }
    }
}

fn default_max_held_series() -> usize {
    256 * 1024
}

/// Which forecasts an advance of the closed epochs publishes. Live, epochs close one at a time
/// and both settings publish the same records; they differ when one advance closes many epochs
/// (a backfill, a restart, a broker coming back).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Each series changed in the advance once, at the last epoch it changed in: the forecast
    /// a planner would act on now. Its earlier forecasts of the advance were stale before they
    /// could be written, and writing them is most of the cost of catching up.
    #[default]
    Latest,
    /// Every changed series at every epoch it changed in, as `replay` writes them: for a
    /// complete forecast history in the mart.
    EveryEpoch,
}

impl CatchUp {
    /// The setting's name in the config.
    pub fn name(self) -> &'static str {
        match self {
            CatchUp::Latest => "latest",
            CatchUp::EveryEpoch => "every_epoch",
        }
    }
}

/// `[checkpoint]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Directory of the checkpoints (shared by every process of a cluster); empty: no
    /// checkpoints, a restart rebuilds the state from the topics.
    #[serde(default)]
    pub dir: String,
    /// A checkpoint is cut at every epoch that is a multiple of this (epochs of event time)...
    #[serde(default = "default_every_epochs")]
    pub every_epochs: u64,
    /// ...but not sooner than this many seconds of wall clock after the previous one started
    /// (a backfill crosses many multiples a second).
    #[serde(default = "default_min_interval")]
    pub min_interval_secs: u64,
    /// Complete checkpoints kept.
    #[serde(default = "default_keep")]
    pub keep: usize,
}

fn default_every_epochs() -> u64 {
    4
}

fn default_min_interval() -> u64 {
    60
}

fn default_keep() -> usize {
    3
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: String::new(),
            every_epochs: default_every_epochs(),
            min_interval_secs: default_min_interval(),
            keep: default_keep(),
        }
    }
}

/// `[sentry]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentryConfig {
    /// The project's DSN (`https://KEY@HOST/PROJECT`); empty: no reporting.
    #[serde(default)]
    pub dsn: String,
    /// The environment events are tagged with, e.g. "production"; empty: Sentry's default.
    #[serde(default)]
    pub environment: String,
}

impl SentryConfig {
    /// The DSN with its key masked, for printing.
    pub fn masked(&self) -> String {
        match self.dsn.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => self.dsn.clone(),
            },
            None => self.dsn.clone(),
        }
    }
}

/// `[redis]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`; empty: no cache.
    #[serde(default)]
    pub url: String,
    /// Seconds a series' value lives after its last write.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    /// Prefix of every key.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
}

fn default_ttl() -> u64 {
    7 * 86_400
}

fn default_prefix() -> String {
    "stockcast:".into()
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            ttl_secs: default_ttl(),
            key_prefix: default_prefix(),
        }
    }
}

/// `[postgres]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection string (`host=.. user=.. dbname=..` or `postgres://..`); empty: no mart.
    #[serde(default)]
    pub url: String,
    /// Days of forecast history kept, counted back from the newest epoch written: older daily
    /// partitions of `stockcast_forecast_history` are dropped. 0 keeps everything.
    #[serde(default = "default_history_retention")]
    pub history_retention_days: u32,
    /// Connections writing each part of an advance at once, every series always over the
    /// same one (1 to 16).
    #[serde(default = "default_postgres_connections")]
    pub connections: usize,
}

fn default_postgres_connections() -> usize {
    2
}

fn default_history_retention() -> u32 {
    400
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: String::new(),
            history_retention_days: default_history_retention(),
            connections: default_postgres_connections(),
        }
    }
}

impl PostgresConfig {
    /// The URL with any password replaced by `***`, for printing.
    pub fn masked(&self) -> String {
        mask_password(&self.url)
    }
}

/// `s` with the password of a `postgres://user:pw@host` URL or a `password=pw` pair masked.
pub fn mask_password(s: &str) -> String {
    if let Some(rest) = s.split_once("://") {
        let (scheme, rest) = rest;
        if let Some((auth, host)) = rest.split_once('@') {
            if let Some((user, _)) = auth.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
        return s.to_string();
    }
    s.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `[http]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz` and `/v1`; empty turns the server off.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// `/healthz` fails once no epoch closed for this long (after the first one did).
    #[serde(default = "default_stall")]
    pub stall_secs: u64,
}

fn default_listen() -> String {
    "127.0.0.1:9898".into()
}

fn default_stall() -> u64 {
    1800
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            stall_secs: default_stall(),
        }
    }
}

/// `[replenish]`: the order policy's settings and the defaults for items the catalog leaves
/// open.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplenishConfig {
    /// Target probability of no stock-out before the next order can arrive, in (0, 1).
    #[serde(default = "default_service_level")]
    pub service_level: f64,
    /// Days between two order decisions.
    #[serde(default = "default_seven")]
    pub review_days: u32,
    /// Lead time of items whose catalog entry has none.
    #[serde(default = "default_seven")]
    pub lead_time_days: u32,
    /// Pack size of items whose catalog entry has none.
    #[serde(default = "default_pack")]
    pub pack_size: f64,
    /// Minimum order of items whose catalog entry has none.
    #[serde(default)]
    pub min_order_qty: f64,
    /// Per-category overrides, by the catalog's category name.
    #[serde(default)]
    pub categories: std::collections::BTreeMap<String, CategoryPolicy>,
}

/// `[replenish.categories.<name>]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryPolicy {
    /// Service level of the category's items.
    pub service_level: Option<f64>,
    /// Review period of the category's items, days.
    pub review_days: Option<u32>,
}

fn default_service_level() -> f64 {
    0.95
}

fn default_seven() -> u32 {
    7
}

fn default_pack() -> f64 {
    1.0
}

impl Default for ReplenishConfig {
    fn default() -> Self {
        ReplenishConfig {
            service_level: default_service_level(),
            review_days: default_seven(),
            lead_time_days: default_seven(),
            pack_size: default_pack(),
            min_order_qty: 0.0,
            categories: Default::default(),
        }
    }
}

/// Prefix of the environment variables that override the config.
const ENV_PREFIX: &str = "STOCKCAST_";

/// Sections environment variables can address, dotted.
const ENV_SECTIONS: [&str; 11] = [
    "checkpoint",
    "output",
    "time",
    "features",
    "forecast",
    "kafka",
    "kafka.topics",
    "replenish",
    "http",
    "postgres",
    "redis",
];

/// Environment variables that are not config: command-line flags read from the environment,
/// and the scripts' and tests' own. (`STOCKCAST_KAFKA_BROKERS` is both a flag and
/// `[kafka] brokers`, with the same meaning.)
pub const RESERVED_ENV: [&str; 14] = [
    "STOCKCAST_CONFIG",
    "STOCKCAST_PROCESS",
    "STOCKCAST_HOSTS",
    "STOCKCAST_PERIOD",
    "STOCKCAST_WORKERS",
    "STOCKCAST_MODEL",
    "STOCKCAST_LISTEN",
    "STOCKCAST_LOG_JSON",
    "STOCKCAST_FONT",
    "STOCKCAST_KAFKA_PORT",
    "STOCKCAST_KAFKA_ADVERTISED_PORT",
    "STOCKCAST_BROKER_DIR",
    "STOCKCAST_BROKER_VENV",
    "STOCKCAST_TEST_POSTGRES",
];

/// `[time]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeConfig {
    /// Demand period: `day` or `week`.
    #[serde(default = "default_period")]
    pub period: PeriodKind,
    /// Length of an epoch (the unit of output) in seconds; must divide 86400.
    #[serde(default = "default_epoch_secs")]
    pub epoch_secs: u64,
    /// How far behind the newest event an event may arrive and still be on time.
    #[serde(default)]
    pub allowed_lateness_secs: u64,
    /// How far after the wall clock an event may be dated; a later one is dead-lettered
    /// `future_time` and never moves the clock. Default: one period (86,400 or 604,800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_future_secs: Option<u64>,
}

fn default_period() -> PeriodKind {
    PeriodKind::Day
}

fn default_epoch_secs() -> u64 {
    900
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig {
            period: default_period(),
            epoch_secs: default_epoch_secs(),
            allowed_lateness_secs: 0,
            max_future_secs: None,
        }
    }
}

/// `[features]`; an absent field takes the default of the period.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesConfig {
    /// Rolling-sum windows in periods.
    pub windows: Option<Vec<u32>>,
    /// Number of past periods exposed as `sales_lag_<k>`.
    pub lags: Option<u32>,
    /// Window of mean, std, zero-demand, stock-out and promotion counts, in periods.
    pub stats_window: Option<u32>,
    /// Window of the average price, in periods.
    pub price_window: Option<u32>,
    /// Daily mode: weeks in the weekday profile.
    pub profile_weeks: Option<u32>,
}

/// `[forecast]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastConfig {
    /// Periods to forecast; default 28 days or 8 weeks.
    pub horizon_periods: Option<u32>,
    /// Baseline forecaster used when no model is loaded.
    #[serde(default = "default_baseline")]
    pub baseline: Baseline,
    /// Model directory (`model.safetensors` + `manifest.json`, written by `train`); without one
    /// the baseline forecasts. Relative paths are relative to the working directory.
    pub model_dir: Option<PathBuf>,
    /// Threads that score changed series (default 2).
    pub scoring_threads: Option<usize>,
    /// Series per scoring batch (default 4096).
    pub scoring_batch: Option<usize>,
}

/// `[kafka]`. Its `Debug` masks secret client properties.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated host:port list.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Consumer group under which processed offsets are committed (never joined: partitions
    /// are assigned statically).
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Partition p of every input topic goes to worker (p + partition_offset) mod workers.
    #[serde(default)]
    pub partition_offset: u32,
    /// A partition with no message for this long stops holding the watermark back.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Most events a worker holds read for epochs that cannot close yet (event time waits
    /// on a slower partition, a silent one, or reference data still being read). At this
    /// many it pauses the partitions that are ahead, and resumes them once it holds half.
    #[serde(default = "default_max_held_events")]
    pub max_held_events: usize,
    /// Topic names.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Extra librdkafka properties for every client (e.g. `security.protocol`).
    #[serde(default)]
    pub client: std::collections::BTreeMap<String, String>,
}

/// Whether a librdkafka property holds a secret (a password, a private key, a token): such
/// values are masked wherever the config is printed or logged.
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "ssl.key.pem",
        "sasl.oauthbearer.config",
    ]
    .iter()
    .any(|s| name.contains(s))
}

impl KafkaConfig {
    /// `[kafka.client]` with every secret value replaced by `***`.
    pub fn masked_client(&self) -> std::collections::BTreeMap<String, String> {
        self.client
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_property(k) { "***" } else { v };
                (k.clone(), v.to_string())
            })
            .collect()
    }
}

impl KafkaConfig {
    /// `text` (typically a client error, which librdkafka words with the offending property's
    /// value) with every secret client value replaced by `***`.
    pub fn scrub(&self, text: impl std::fmt::Display) -> String {
        let mut text = text.to_string();
        for (k, v) in &self.client {
            if is_secret_property(k) && !v.is_empty() {
                text = text.replace(v.as_str(), "***");
            }
        }
        text
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("partition_offset", &self.partition_offset)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("max_held_events", &self.max_held_events)
            .field("topics", &self.topics)
            .field("client", &self.masked_client())
            .finish()
    }
}

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}

fn default_group() -> String {
    "stockcast".into()
}

fn default_idle_timeout() -> u64 {
    30
}

fn default_max_held_events() -> usize {
    1 << 20
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: default_brokers(),
            group_id: default_group(),
            partition_offset: 0,
            idle_timeout_secs: default_idle_timeout(),
            max_held_events: default_max_held_events(),
            topics: TopicsConfig::default(),
            client: Default::default(),
        }
    }
}

/// `[kafka.topics]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Sales events.
    pub sales: String,
    /// Stock movements.
    pub stock: String,
    /// Catalog items (compacted, key = sku_id).
    pub catalog: String,
    /// Stores (compacted, key = store_id).
    pub stores: String,
    /// Calendar promotions (compacted, key = promo_id; a null value deletes).
    pub promotions: String,
    /// Price plan entries (compacted, key = price_id; a null value deletes).
    pub prices: String,
    /// Forecast records out.
    pub forecasts: String,
    /// One progress record per advance of the closed epochs.
    pub epochs: String,
    /// Records that could not be used, with the reason.
    pub dead_letters: String,
}

impl TopicsConfig {
    /// The topic records of `kind` are read from.
    pub fn input(&self, kind: FileKind) -> &str {
        match kind {
            FileKind::Sales => &self.sales,
            FileKind::Stock => &self.stock,
            FileKind::Catalog => &self.catalog,
            FileKind::Stores => &self.stores,
            FileKind::Promotions => &self.promotions,
            FileKind::Prices => &self.prices,
        }
    }

    /// Puts `prefix` before every topic name (isolated topic sets for tests and benchmarks).
    pub fn prefix_all(&mut self, prefix: &str) {
        for name in [
            &mut self.sales,
            &mut self.stock,
            &mut self.catalog,
            &mut self.stores,
            &mut self.promotions,
            &mut self.prices,
            &mut self.forecasts,
            &mut self.epochs,
            &mut self.dead_letters,
        ] {
            *name = format!("{prefix}{name}");
        }
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            sales: "stockcast.sales".into(),
            stock: "stockcast.stock".into(),
            catalog: "stockcast.catalog".into(),
            stores: "stockcast.stores".into(),
            promotions: "stockcast.promotions".into(),
            prices: "stockcast.prices".into(),
            forecasts: "stockcast.forecasts".into(),
            epochs: "stockcast.epochs".into(),
            dead_letters: "stockcast.dead-letters".into(),
        }
    }
}

fn default_baseline() -> Baseline {
    Baseline::MovingAverage
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names the field).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// The parser's message, naming the field and position.
        message: String,
    },
    /// A field has a value that cannot work.
    #[error("{file}: field `{field}`: {message}")]
    Invalid {
        /// The file (or `<defaults>`/`<command line>`).
        file: PathBuf,
        /// The dotted field name.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Which model scores, and on how many threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSettings {
    /// Model directory; `None` means the baseline.
    pub dir: Option<PathBuf>,
    /// Scoring threads.
    pub threads: usize,
    /// Series per batch.
    pub batch: usize,
}

/// Everything a run needs, resolved from the file, defaults and flags.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// Epochs and periods.
    pub clock: Clock,
    /// Features maintained.
    pub spec: FeatureSpec,
    /// Allowed lateness in seconds.
    pub allowed_lateness_secs: i64,
    /// Events dated more than this after the wall clock are refused (`future_time`).
    pub max_future_secs: i64,
    /// Baseline forecaster.
    pub baseline: Baseline,
    /// Model and scoring threads.
    pub model: ModelSettings,
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// Order policy settings (validated).
    pub replenish: ReplenishConfig,
    /// HTTP server settings.
    pub http: HttpConfig,
    /// The mart, if configured.
    pub postgres: PostgresConfig,
    /// The cache, if configured.
    pub redis: RedisConfig,
    /// Error reporting, if configured (the DSN is valid).
    pub sentry: SentryConfig,
    /// Checkpoints (validated; `dir` empty: none).
    pub checkpoint: CheckpointConfig,
    /// What an advance publishes.
    pub output: OutputConfig,
}

impl Config {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Applies environment variables over the file: `STOCKCAST_<SECTION>_<FIELD>` sets
    /// `[section] field` (`STOCKCAST_KAFKA_TOPICS_SALES` sets `[kafka.topics] sales`). The value
    /// is read as a TOML value (`30`, `0.9`, `true`, `[1, 7]`), else as a string. Variables the
    /// command line and scripts use for themselves ([`RESERVED_ENV`]) are not config. Returns the
    /// names of the variables applied; an unknown field or a bad value is an error naming the
    /// variable.
    pub fn with_env(
        &self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let mut tree = toml::Value::try_from(self).map_err(|e| ConfigError::Parse {
            file: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        let mut applied = Vec::new();
        let mut vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !RESERVED_ENV.contains(&k.as_str()))
            .collect();
        vars.sort();
        for (name, raw) in vars {
            let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
            // The longest section that prefixes the rest, then the field.
            let Some((section, field)) = ENV_SECTIONS
                .iter()
                .filter_map(|sec| {
                    let flat = sec.replace('.', "_");
                    let field = rest.strip_prefix(&flat)?.strip_prefix('_')?;
                    (!field.is_empty()).then_some((*sec, field.to_string()))
                })
                .max_by_key(|(sec, _)| sec.len())
            else {
                continue;
            };
            let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.clone()));
            let mut table = &mut tree;
            for part in section.split('.') {
                let toml::Value::Table(t) = table else { break };
                table = t
                    .entry(part.to_string())
                    .or_insert_with(|| toml::Value::Table(Default::default()));
            }
            if let toml::Value::Table(t) = table {
                t.insert(field, value);
            }
            applied.push(name);
        }
        let origin = PathBuf::from(format!("<environment: {}>", applied.join(", ")));
        let config: Config = tree
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                file: origin,
                message: e.to_string().trim_end().to_string(),
            })?;
        Ok((config, applied))
    }

    /// Parses config text; `path` is used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Validates and resolves defaults; `origin` names the source in errors.
    pub fn resolve(&self, origin: &Path) -> Result<Resolved, ConfigError> {
        let invalid = |field, message: String| ConfigError::Invalid {
            file: origin.to_path_buf(),
            field,
            message,
        };
        let period = self.time.period;
        let clock = Clock::new(self.time.epoch_secs, period)
            .map_err(|e| invalid("time.epoch_secs", e.0))?;
        let d = FeatureSpec::for_period(period);
        let f = &self.features;
        let spec = FeatureSpec {
            period,
            windows: f.windows.clone().unwrap_or(d.windows),
            lags: f.lags.unwrap_or(d.lags),
            stats_window: f.stats_window.unwrap_or(d.stats_window),
            price_window: f.price_window.unwrap_or(d.price_window),
            profile_weeks: f.profile_weeks.unwrap_or(d.profile_weeks),
            horizon: self.forecast.horizon_periods.unwrap_or(d.horizon),
        };
        if let Err(e) = spec.validate() {
            let field = if e.0.contains("horizon") {
                "forecast.horizon_periods"
            } else if e.0.starts_with("windows") {
                "features.windows"
            } else if e.0.contains("profile_weeks") {
                "features.profile_weeks"
            } else {
                "features"
            };
            return Err(invalid(field, e.0));
        }
        if spec.lags > 400 || spec.retention() > 800 {
            return Err(invalid(
                "features",
                format!(
                    "windows reach {} periods back; at most 800 are supported",
                    spec.retention()
                ),
            ));
        }
        let threads = self.forecast.scoring_threads.unwrap_or(2);
        if !(1..=64).contains(&threads) {
            return Err(invalid(
                "forecast.scoring_threads",
                format!("{threads} must be between 1 and 64"),
            ));
        }
        let batch = self.forecast.scoring_batch.unwrap_or(4096);
        if !(1..=1_000_000).contains(&batch) {
            return Err(invalid(
                "forecast.scoring_batch",
                format!("{batch} must be between 1 and 1000000"),
            ));
        }
        if self.output.max_held_series == 0 {
            return Err(invalid(
                "output.max_held_series",
                "must be at least 1".into(),
            ));
        }
        Ok(Resolved {
            model: ModelSettings {
                dir: self.forecast.model_dir.clone(),
                threads,
                batch,
            },
            clock,
            spec,
            allowed_lateness_secs: self.time.allowed_lateness_secs.min(i64::MAX as u64) as i64,
            max_future_secs: self.resolve_max_future(origin)?,
            baseline: self.forecast.baseline,
            kafka: self.resolve_kafka(origin)?,
            replenish: self.resolve_replenish(origin)?,
            http: self.resolve_http(origin)?,
            postgres: self.resolve_postgres(origin)?,
            redis: self.resolve_redis(origin)?,
            sentry: self.resolve_sentry(origin)?,
            checkpoint: self.resolve_checkpoint(origin)?,
            output: self.output.clone(),
        })
    }
}

/// One hostile config file: parsed, resolved, and overridden by a variable taken from its last
/// line (`STOCKCAST_<SECTION>_<FIELD>=value`). Only errors may come of it; the fuzz target and
/// the hostile-input tests call it.
pub fn exercise(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let path = Path::new("fuzz.toml");
    let Ok(config) = Config::parse(&text, path) else {
        return;
    };
    let _ = config.resolve(path);
    if let Some((name, value)) = text.lines().last().and_then(|l| l.split_once('=')) {
        if let Ok((config, _)) = config.with_env([(name.to_string(), value.to_string())]) {
            let _ = config.resolve(path);
        }
    }
}

impl Config {
    fn resolve_max_future(&self, origin: &Path) -> Result<i64, ConfigError> {
        let one_period = self.time.period.period_start(1) - self.time.period.period_start(0);
        match self.time.max_future_secs {
            None => Ok(one_period),
            // Ten years: far enough for any real plan, small enough to add to a timestamp.
            Some(s) if s > 315_360_000 => Err(ConfigError::Invalid {
                file: origin.to_path_buf(),
                field: "time.max_future_secs",
                message: format!("{s} is more than ten years (315360000)"),
            }),
            Some(s) => Ok(s as i64),
        }
    }

    fn resolve_redis(&self, origin: &Path) -> Result<RedisConfig, ConfigError> {
        let r = &self.redis;
        let invalid = |field, message: String| ConfigError::Invalid {
            file: origin.to_path_buf(),
            field,
            message,
        };
        if !r.url.is_empty() {
            if let Err(e) = redis::Client::open(r.url.as_str()) {
                return Err(invalid("redis.url", format!("not a Redis URL: {e}")));
            }
        }
        if r.ttl_secs == 0 {
            return Err(invalid("redis.ttl_secs", "must be at least 1".into()));
        }
        Ok(r.clone())
    }

    fn resolve_sentry(&self, origin: &Path) -> Result<SentryConfig, ConfigError> {
        let dsn = &self.sentry.dsn;
        if !dsn.is_empty() {
            if let Err(e) = dsn.parse::<sentry::types::Dsn>() {
                return Err(ConfigError::Invalid {
                    file: origin.to_path_buf(),
                    field: "sentry.dsn",
                    message: format!("not a Sentry DSN (https://KEY@HOST/PROJECT): {e}"),
                });
            }
        }
        Ok(self.sentry.clone())
    }

    fn resolve_postgres(&self, origin: &Path) -> Result<PostgresConfig, ConfigError> {
        let url = &self.postgres.url;
        if !url.is_empty() {
            if let Err(e) = url.parse::<tokio_postgres::Config>() {
                return Err(ConfigError::Invalid {
                    file: origin.to_path_buf(),
                    field: "postgres.url",
                    message: format!("not a PostgreSQL connection string: {e}"),
                });
            }
        }
        let days = self.postgres.history_retention_days;
        if days > 36_500 {
            return Err(ConfigError::Invalid {
                file: origin.to_path_buf(),
                field: "postgres.history_retention_days",
                message: format!("{days} is more than 100 years; 0 keeps everything"),
            });
        }
        let n = self.postgres.connections;
        if !(1..=16).contains(&n) {
            return Err(ConfigError::Invalid {
                file: origin.to_path_buf(),
                field: "postgres.connections",
                message: format!("{n}: expected 1 to 16"),
            });
        }
        Ok(self.postgres.clone())
    }

    fn resolve_checkpoint(&self, origin: &Path) -> Result<CheckpointConfig, ConfigError> {
        let c = &self.checkpoint;
        let invalid = |field, message: String| ConfigError::Invalid {
            file: origin.to_path_buf(),
            field,
            message,
        };
        if c.every_epochs == 0 || c.every_epochs > 1_000_000 {
            return Err(invalid(
                "checkpoint.every_epochs",
                format!("{} must be between 1 and 1000000", c.every_epochs),
            ));
        }
        if c.keep == 0 || c.keep > 1000 {
            return Err(invalid(
                "checkpoint.keep",
                format!("{} must be between 1 and 1000", c.keep),
            ));
        }
        if c.min_interval_secs > 7 * 86_400 {
            return Err(invalid(
                "checkpoint.min_interval_secs",
                format!("{} is more than a week", c.min_interval_secs),
            ));
        }
        if c.dir.chars().any(char::is_control) {
            return Err(invalid(
                "checkpoint.dir",
                "contains control characters".into(),
            ));
        }
        Ok(c.clone())
    }

    fn resolve_http(&self, origin: &Path) -> Result<HttpConfig, ConfigError> {
        let h = &self.http;
        let invalid = |field, message: String| ConfigError::Invalid {
            file: origin.to_path_buf(),
            field,
            message,
        };
        if !h.listen.is_empty() && h.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "http.listen",
                format!("`{}` is not an address like 127.0.0.1:9898", h.listen),
            ));
        }
        if h.stall_secs == 0 {
            return Err(invalid("http.stall_secs", "must be at least 1".into()));
        }
        Ok(h.clone())
    }

    fn resolve_replenish(&self, origin: &Path) -> Result<ReplenishConfig, ConfigError> {
        let r = &self.replenish;
        let invalid = |field, message: String| ConfigError::Invalid {
            file: origin.to_path_buf(),
            field,
            message,
        };
        let level = |field, v: f64| {
            if v > 0.0 && v < 1.0 {
                Ok(())
            } else {
                Err(invalid(
                    field,
                    format!("{v} must be strictly between 0 and 1"),
                ))
            }
        };
        let days = |field, v: u32| {
            if (1..=365).contains(&v) {
                Ok(())
            } else {
                Err(invalid(
                    field,
                    format!("{v} must be between 1 and 365 days"),
                ))
            }
        };
        level("replenish.service_level", r.service_level)?;
        days("replenish.review_days", r.review_days)?;
        days("replenish.lead_time_days", r.lead_time_days)?;
        if !(r.pack_size > 0.0 && r.pack_size.is_finite()) {
            return Err(invalid(
                "replenish.pack_size",
                format!("{} must be positive", r.pack_size),
            ));
        }
        if !(r.min_order_qty >= 0.0 && r.min_order_qty.is_finite()) {
            return Err(invalid(
                "replenish.min_order_qty",
                format!("{} must be 0 or more", r.min_order_qty),
            ));
        }
        for c in r.categories.values() {
            if let Some(v) = c.service_level {
                level("replenish.categories.*.service_level", v)?;
            }
            if let Some(v) = c.review_days {
                days("replenish.categories.*.review_days", v)?;
            }
        }
        Ok(r.clone())
    }

    fn resolve_kafka(&self, origin: &Path) -> Result<KafkaConfig, ConfigError> {
        let k = &self.kafka;
        let invalid = |field, message: &str| ConfigError::Invalid {
            file: origin.to_path_buf(),
            field,
            message: message.to_string(),
        };
        if k.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "must name at least one host:port"));
        }
        if k.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "must not be empty"));
        }
        if k.idle_timeout_secs == 0 {
            return Err(invalid("kafka.idle_timeout_secs", "must be at least 1"));
        }
        if k.max_held_events == 0 {
            return Err(invalid("kafka.max_held_events", "must be at least 1"));
        }
        let t = &k.topics;
        let named = [
            ("kafka.topics.sales", &t.sales),
            ("kafka.topics.stock", &t.stock),
            ("kafka.topics.catalog", &t.catalog),
            ("kafka.topics.stores", &t.stores),
            ("kafka.topics.promotions", &t.promotions),
            ("kafka.topics.prices", &t.prices),
            ("kafka.topics.forecasts", &t.forecasts),
            ("kafka.topics.epochs", &t.epochs),
            ("kafka.topics.dead_letters", &t.dead_letters),
        ];
        for (i, (field, name)) in named.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(invalid(field, "must not be empty"));
            }
            if named[..i].iter().any(|(_, other)| other == name) {
                return Err(invalid(
                    field,
                    "names a topic already used for another role",
                ));
            }
        }
        Ok(k.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_named_with_the_file() {
        let err = Config::parse("[time]\nepoch_sec = 60\n", Path::new("x.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("x.toml") && msg.contains("epoch_sec"), "{msg}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let c = Config::parse("[time]\nepoch_secs = 7\n", Path::new("c.toml")).unwrap();
        let msg = c.resolve(Path::new("c.toml")).unwrap_err().to_string();
        assert!(
            msg.contains("c.toml") && msg.contains("time.epoch_secs"),
            "{msg}"
        );
        let c = Config::parse(
            "[time]\nperiod = \"week\"\n[forecast]\nhorizon_periods = 60\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let msg = c.resolve(Path::new("c.toml")).unwrap_err().to_string();
        assert!(msg.contains("forecast.horizon_periods"), "{msg}");
        let c = Config::parse("[kafka]\nmax_held_events = 0\n", Path::new("c.toml")).unwrap();
        let msg = c.resolve(Path::new("c.toml")).unwrap_err().to_string();
        assert!(
            msg.contains("c.toml") && msg.contains("kafka.max_held_events"),
            "{msg}"
        );
        let c = Config::parse("[output]\nmax_held_series = 0\n", Path::new("c.toml")).unwrap();
        let msg = c.resolve(Path::new("c.toml")).unwrap_err().to_string();
        assert!(
            msg.contains("c.toml") && msg.contains("output.max_held_series"),
            "{msg}"
        );
        for n in [0, 17] {
            let text = format!("[postgres]\nconnections = {n}\n");
            let c = Config::parse(&text, Path::new("c.toml")).unwrap();
            let msg = c.resolve(Path::new("c.toml")).unwrap_err().to_string();
            assert!(
                msg.contains("c.toml") && msg.contains("postgres.connections"),
                "{msg}"
            );
        }
    }

    #[test]
    fn replenish_values_are_checked_and_named() {
        for (text, field) in [
            (
                "[replenish]\nservice_level = 1.0\n",
                "replenish.service_level",
            ),
            ("[replenish]\nreview_days = 0\n", "replenish.review_days"),
            ("[replenish]\npack_size = -2\n", "replenish.pack_size"),
            (
                "[replenish.categories.A]\nservice_level = 0\n",
                "replenish.categories.*.service_level",
            ),
        ] {
            let c = Config::parse(text, Path::new("r.toml")).unwrap();
            let msg = c.resolve(Path::new("r.toml")).unwrap_err().to_string();
            assert!(msg.contains("r.toml") && msg.contains(field), "{msg}");
        }
        let c = Config::parse(
            "[replenish]\nservice_level = 0.9\n[replenish.categories.A]\nreview_days = 3\n",
            Path::new("r.toml"),
        )
        .unwrap();
        let r = c.resolve(Path::new("r.toml")).unwrap().replenish;
        assert_eq!(r.service_level, 0.9);
        assert_eq!(r.categories["A"].review_days, Some(3));
    }

    #[test]
    fn environment_variables_override_the_file_and_name_themselves_in_errors() {
        let file = Config::parse(
            "[kafka]\nidle_timeout_secs = 5\n[http]\nstall_secs = 60\n",
            Path::new("f.toml"),
        )
        .unwrap();
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let (c, applied) = file
            .with_env(env(&[
                ("STOCKCAST_KAFKA_IDLE_TIMEOUT_SECS", "9"),
                ("STOCKCAST_KAFKA_TOPICS_SALES", "shop.sales"),
                ("STOCKCAST_POSTGRES_URL", "host=db user=app"),
                ("STOCKCAST_REPLENISH_SERVICE_LEVEL", "0.9"),
                ("STOCKCAST_FEATURES_WINDOWS", "[1, 7]"),
                ("STOCKCAST_WORKERS", "4"),
                ("OTHER", "x"),
            ]))
            .unwrap();
        assert_eq!(applied.len(), 5, "{applied:?}");
        assert_eq!(c.kafka.idle_timeout_secs, 9);
        assert_eq!(c.kafka.topics.sales, "shop.sales");
        assert_eq!(c.postgres.url, "host=db user=app");
        assert_eq!(c.replenish.service_level, 0.9);
        assert_eq!(c.features.windows, Some(vec![1, 7]));
        assert_eq!(c.http.stall_secs, 60, "the file's value stays");
        let err = file
            .with_env(env(&[("STOCKCAST_KAFKA_IDLE_TIMEOUT", "9")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("STOCKCAST_KAFKA_IDLE_TIMEOUT") && err.contains("idle_timeout"),
            "{err}"
        );
        let err = file
            .with_env(env(&[("STOCKCAST_HTTP_STALL_SECS", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("STOCKCAST_HTTP_STALL_SECS"), "{err}");
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("postgres://app:s3cret@db:5432/mart"),
            "postgres://app:***@db:5432/mart"
        );
        assert_eq!(
            mask_password("host=db user=app password=s3cret dbname=mart"),
            "host=db user=app password=*** dbname=mart"
        );
        assert_eq!(mask_password("host=db user=app"), "host=db user=app");
        let c = Config::parse("[postgres]\nurl = \"host='db\"\n", Path::new("p.toml")).unwrap();
        let msg = c.resolve(Path::new("p.toml")).unwrap_err().to_string();
        assert!(
            msg.contains("p.toml") && msg.contains("postgres.url"),
            "{msg}"
        );
    }

    #[test]
    fn secret_client_properties_are_masked() {
        let mut k = KafkaConfig::default();
        for (name, value) in [
            ("sasl.password", "pw1"),
            ("ssl.key.password", "pw2"),
            ("ssl.keystore.password", "pw3"),
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----"),
            ("sasl.oauthbearer.client.secret", "pw4"),
            ("sasl.username", "app"),
            ("security.protocol", "sasl_ssl"),
        ] {
            k.client.insert(name.into(), value.into());
        }
        let shown = format!("{k:?} {:?}", k.masked_client());
        for secret in ["pw1", "pw2", "pw3", "PRIVATE KEY", "pw4"] {
            assert!(!shown.contains(secret), "{secret} shows in {shown}");
        }
        assert!(shown.contains("sasl_ssl") && shown.contains("\"app\""));
    }

    #[test]
    fn the_sentry_dsn_is_checked_and_masked() {
        let c = Config::parse(
            "[sentry]\ndsn = \"https://k3y@o1.ingest.sentry.io/7\"\n",
            Path::new("s.toml"),
        )
        .unwrap();
        assert_eq!(
            c.resolve(Path::new("s.toml")).unwrap().sentry.dsn,
            c.sentry.dsn
        );
        assert_eq!(c.sentry.masked(), "https://***@o1.ingest.sentry.io/7");
        let c = Config::parse("[sentry]\ndsn = \"sentry.io\"\n", Path::new("s.toml")).unwrap();
        let msg = c.resolve(Path::new("s.toml")).unwrap_err().to_string();
        assert!(
            msg.contains("s.toml") && msg.contains("sentry.dsn"),
            "{msg}"
        );
    }

    #[test]
    fn defaults_follow_the_period() {
        let mut c = Config::default();
        assert_eq!(
            c.resolve(Path::new("-")).unwrap().spec,
            FeatureSpec::daily()
        );
        c.time.period = PeriodKind::Week;
        assert_eq!(
            c.resolve(Path::new("-")).unwrap().spec,
            FeatureSpec::weekly()
        );
    }
}
