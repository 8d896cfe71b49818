use lodestone_model::RejectReason;

/// Everything the store can fail with, apart from per-record rejections (those are
/// [`lodestone_model::Rejection`]s, data rather than errors).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("catalog version {version} is unreadable: {detail}")]
    CorruptCatalog { version: u64, detail: String },
    #[error("parquet file {path}: {detail}")]
    Parquet { path: String, detail: String },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("database {0:?} not found")]
    DatabaseNotFound(String),
    #[error("table {database:?}.{table:?} not found")]
    TableNotFound { database: String, table: String },
    #[error("database {0:?} already exists")]
    DatabaseExists(String),
    #[error("table {database:?}.{table:?} already exists")]
    TableExists { database: String, table: String },
    #[error("database {0:?} still has tables")]
    DatabaseNotEmpty(String),
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("the store holds its maximum of {limit} {what} (store.limits)")]
    LimitReached { what: String, limit: usize, reason: RejectReason },
    #[error("alert rule {0:?} not found")]
    AlertNotFound(String),
    #[error("catalog commit lost the race {attempts} times; too much contention")]
    CommitContention { attempts: u32 },
}

impl StoreError {
    /// The rejection reason a record gets when writing it failed with this error, if any.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            StoreError::TableNotFound { .. } | StoreError::DatabaseNotFound(_) => Some(RejectReason::TableNotFound),
            StoreError::LimitReached { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}
