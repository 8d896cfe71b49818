//! `DescribeEndpoints` and the management operations: databases, tables and their tags, on the
//! same catalog the REST API and SQL's `SHOW` see. Creating, changing and dropping needs the
//! `admin` scope (as over REST); describing and listing, read access to the database.

use std::collections::BTreeMap;

use lodestone_kit::auth::Scope;
use lodestone_store::{Resource, ResourceInfo, Snapshot, StoreError, TableEntry, TableProperties, TableRef};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{arn, parse_arn, AwsError, Call, TimestreamApi};

/// How long SDKs may keep the address `DescribeEndpoints` gives (Timestream's own answer: a day).
const CACHE_PERIOD_MINUTES: u64 = 1440;

/// Most entries one List page may hold (Timestream's `PaginationLimit`).
const PAGE_MAX: usize = 20;

pub fn describe_endpoints(api: &TimestreamApi) -> Result<Value, AwsError> {
    Ok(json!({"Endpoints": [{"Address": api.advertised_url, "CachePeriodInMinutes": CACHE_PERIOD_MINUTES}]}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Tag {
    key: String,
    value: String,
}

fn tags_of(tags: Option<Vec<Tag>>) -> Result<BTreeMap<String, String>, AwsError> {
    let tags = tags.unwrap_or_default();
    if tags.len() > 200 {
        return Err(AwsError::validation(format!("{} tags, at most 200", tags.len())));
    }
    for tag in &tags {
        if !(1..=128).contains(&tag.key.len()) || tag.value.len() > 256 {
            return Err(AwsError::validation(format!("tag {:?}: keys are 1 to 128 bytes, values at most 256", tag.key)));
        }
    }
    Ok(tags.into_iter().map(|tag| (tag.key, tag.value)).collect())
}

fn tag_list(tags: &BTreeMap<String, String>) -> Value {
    Value::Array(tags.iter().map(|(key, value)| json!({"Key": key, "Value": value})).collect())
}

/// Unix nanoseconds as the JSON protocol's timestamps: seconds since the epoch.
fn epoch_seconds(ns: i64) -> Value {
    json!(ns as f64 / 1e9)
}

fn database_json(api: &TimestreamApi, region: &str, snapshot: &Snapshot, name: &str) -> Value {
    let info = snapshot.database_info(name);
    let mut database = json!({
        "Arn": arn(region, &api.account_id, name, None),
        "DatabaseName": name,
        "TableCount": snapshot.databases.get(name).map_or(0, BTreeMap::len),
        "CreationTime": epoch_seconds(info.created_ns),
        "LastUpdatedTime": epoch_seconds(info.updated_ns),
    });
    if let Some(key) = &info.kms_key_id {
        database["KmsKeyId"] = key.clone().into();
    }
    database
}

fn table_json(api: &TimestreamApi, region: &str, table: &TableRef, entry: &TableEntry) -> Value {
    json!({
        "Arn": arn(region, &api.account_id, &table.database, Some(&table.table)),
        "TableName": table.table,
        "DatabaseName": table.database,
        "TableStatus": "ACTIVE",
        "RetentionProperties": {
            "MemoryStoreRetentionPeriodInHours": entry.properties.memory_retention_hours,
            "MagneticStoreRetentionPeriodInDays": entry.properties.magnetic_retention_days,
        },
        "MagneticStoreWriteProperties": {"EnableMagneticStoreWrites": entry.properties.magnetic_store_writes},
        "Schema": {"CompositePartitionKey": [{"Type": "MEASURE", "EnforcementInRecord": "OPTIONAL"}]},
        "CreationTime": epoch_seconds(entry.info.created_ns),
        "LastUpdatedTime": epoch_seconds(entry.info.updated_ns),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DatabaseName {
    database_name: String,
}

pub async fn create_database(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Input {
        database_name: String,
        kms_key_id: Option<String>,
        tags: Option<Vec<Tag>>,
    }
    let input: Input = call.input()?;
    call.caller.require(&Scope::Admin)?;
    let tags = tags_of(input.tags)?;
    let mut snapshot = api.engine.store().create_database_tagged(&input.database_name, tags).await?;
    if let Some(key) = input.kms_key_id {
        snapshot = api.engine.store().update_info(Resource::Database(&input.database_name), |info| info.kms_key_id = Some(key.clone())).await?;
    }
    api.changed();
    Ok(json!({"Database": database_json(api, &call.region, &snapshot, &input.database_name)}))
}

fn database_exists(snapshot: &Snapshot, name: &str) -> Result<(), AwsError> {
    match snapshot.databases.contains_key(name) {
        true => Ok(()),
        false => Err(StoreError::DatabaseNotFound(name.to_string()).into()),
    }
}

pub async fn describe_database(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    let input: DatabaseName = call.input()?;
    call.caller.require_read(&input.database_name)?;
    let snapshot = api.snapshot(true).await?;
    database_exists(&snapshot, &input.database_name)?;
    Ok(json!({"Database": database_json(api, &call.region, &snapshot, &input.database_name)}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListInput {
    database_name: Option<String>,
    next_token: Option<String>,
    max_results: Option<usize>,
}

/// The page of `names` (sorted) after `next_token` (the last name of the page before), at most
/// `max_results` long (all when absent); and the token of the next page.
fn page<T: Clone>(entries: &[(String, T)], input: &ListInput) -> Result<(Vec<T>, Option<String>), AwsError> {
    let size = match input.max_results {
        None => usize::MAX,
        Some(size) if (1..=PAGE_MAX).contains(&size) => size,
        Some(size) => return Err(AwsError::validation(format!("MaxResults {size} is not within 1..={PAGE_MAX}"))),
    };
    let after = input.next_token.as_deref().unwrap_or("");
    let rest: Vec<&(String, T)> = entries.iter().filter(|(key, _)| input.next_token.is_none() || key.as_str() > after).collect();
    let taken: Vec<T> = rest.iter().take(size).map(|(_, value)| value.clone()).collect();
    let next = (rest.len() > size).then(|| rest[size - 1].0.clone());
    Ok((taken, next))
}

fn with_token(mut answer: Value, next: Option<String>) -> Value {
    if let Some(token) = next {
        answer["NextToken"] = token.into();
    }
    answer
}

pub async fn list_databases(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    let input: ListInput = call.input()?;
    let snapshot = api.snapshot(true).await?;
    let entries: Vec<(String, Value)> = snapshot
        .databases
        .keys()
        .filter(|name| call.caller.can_read(name))
        .map(|name| (name.clone(), database_json(api, &call.region, &snapshot, name)))
        .collect();
    let (databases, next) = page(&entries, &input)?;
    Ok(with_token(json!({"Databases": databases}), next))
}

pub async fn update_database(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Input {
        database_name: String,
        kms_key_id: String,
    }
    let input: Input = call.input()?;
    call.caller.require(&Scope::Admin)?;
    let snapshot = api.engine.store().update_info(Resource::Database(&input.database_name), |info| info.kms_key_id = Some(input.kms_key_id.clone())).await?;
    api.changed();
    Ok(json!({"Database": database_json(api, &call.region, &snapshot, &input.database_name)}))
}

pub async fn delete_database(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    let input: DatabaseName = call.input()?;
    call.caller.require(&Scope::Admin)?;
    api.engine.store().drop_database(&input.database_name).await?;
    api.changed();
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RetentionInput {
    memory_store_retention_period_in_hours: i64,
    magnetic_store_retention_period_in_days: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MagneticWritesInput {
    enable_magnetic_store_writes: bool,
}

/// `properties` with the retention and magnetic writes a request gives.
fn properties_with(mut properties: TableProperties, retention: Option<RetentionInput>, magnetic: Option<MagneticWritesInput>) -> Result<TableProperties, AwsError> {
    if let Some(retention) = retention {
        let hours = retention.memory_store_retention_period_in_hours;
        let days = retention.magnetic_store_retention_period_in_days;
        if !(1..=8766).contains(&hours) {
            return Err(AwsError::validation(format!("MemoryStoreRetentionPeriodInHours {hours} is not within 1..=8766")));
        }
        if !(1..=73_000).contains(&days) {
            return Err(AwsError::validation(format!("MagneticStoreRetentionPeriodInDays {days} is not within 1..=73000")));
        }
        properties.memory_retention_hours = hours as u32;
        properties.magnetic_retention_days = days as u32;
    }
    if let Some(magnetic) = magnetic {
        properties.magnetic_store_writes = magnetic.enable_magnetic_store_writes;
    }
    Ok(properties)
}

pub async fn create_table(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Input {
        database_name: String,
        table_name: String,
        retention_properties: Option<RetentionInput>,
        magnetic_store_write_properties: Option<MagneticWritesInput>,
        tags: Option<Vec<Tag>>,
    }
    let input: Input = call.input()?;
    call.caller.require(&Scope::Admin)?;
    let properties = properties_with(TableProperties::default(), input.retention_properties, input.magnetic_store_write_properties)?;
    let tags = tags_of(input.tags)?;
    let table = TableRef { database: input.database_name, table: input.table_name };
    let snapshot = api.engine.store().create_table_tagged(&table, properties, tags).await?;
    api.changed();
    let entry = snapshot.table(&table).ok_or_else(|| AwsError::internal("the table just created is not in the catalog".into()))?;
    Ok(json!({"Table": table_json(api, &call.region, &table, entry)}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TableName {
    database_name: String,
    table_name: String,
}

impl TableName {
    fn table(self) -> TableRef {
        TableRef { database: self.database_name, table: self.table_name }
    }
}

fn table_of<'a>(snapshot: &'a Snapshot, table: &TableRef) -> Result<&'a TableEntry, AwsError> {
    snapshot.table(table).ok_or_else(|| StoreError::TableNotFound { database: table.database.clone(), table: table.table.clone() }.into())
}

pub async fn describe_table(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    let table = call.input::<TableName>()?.table();
    call.caller.require_read(&table.database)?;
    let snapshot = api.snapshot(true).await?;
    Ok(json!({"Table": table_json(api, &call.region, &table, table_of(&snapshot, &table)?)}))
}

pub async fn list_tables(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    let input: ListInput = call.input()?;
    let snapshot = api.snapshot(true).await?;
    if let Some(database) = &input.database_name {
        call.caller.require_read(database)?;
        database_exists(&snapshot, database)?;
    }
    let mut entries = Vec::new();
    for (database, tables) in &snapshot.databases {
        if input.database_name.as_ref().is_some_and(|wanted| wanted != database) || !call.caller.can_read(database) {
            continue;
        }
        for (name, entry) in tables {
            let table = TableRef { database: database.clone(), table: name.clone() };
            // Ordered by database, then table: \u{1} sorts before any character of a name.
            entries.push((format!("{database}\u{1}{name}"), table_json(api, &call.region, &table, entry)));
        }
    }
    let (tables, next) = page(&entries, &input)?;
    Ok(with_token(json!({"Tables": tables}), next))
}

pub async fn update_table(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Input {
        database_name: String,
        table_name: String,
        retention_properties: Option<RetentionInput>,
        magnetic_store_write_properties: Option<MagneticWritesInput>,
    }
    let input: Input = call.input()?;
    call.caller.require(&Scope::Admin)?;
    let table = TableRef { database: input.database_name, table: input.table_name };
    let snapshot = api.snapshot(true).await?;
    let properties = properties_with(table_of(&snapshot, &table)?.properties.clone(), input.retention_properties, input.magnetic_store_write_properties)?;
    let snapshot = api.engine.store().update_table(&table, properties).await?;
    api.changed();
    Ok(json!({"Table": table_json(api, &call.region, &table, table_of(&snapshot, &table)?)}))
}

pub async fn delete_table(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    let table = call.input::<TableName>()?.table();
    call.caller.require(&Scope::Admin)?;
    api.engine.store().drop_table(&table).await?;
    api.changed();
    Ok(json!({}))
}

/// The database or table an ARN names, which must exist.
async fn resource_of(api: &TimestreamApi, arn: &str) -> Result<(String, Option<String>, ResourceInfo), AwsError> {
    let (database, table) = parse_arn(arn).ok_or_else(|| AwsError::validation(format!("{arn:?} is not the ARN of a Timestream database or table")))?;
    let snapshot = api.snapshot(true).await?;
    let info = match &table {
        None => {
            database_exists(&snapshot, &database)?;
            snapshot.database_info(&database)
        }
        Some(name) => table_of(&snapshot, &TableRef { database: database.clone(), table: name.clone() })?.info.clone(),
    };
    Ok((database, table, info))
}

async fn retag(api: &TimestreamApi, arn: &str, change: impl Fn(&mut ResourceInfo)) -> Result<(), AwsError> {
    let (database, table, _) = resource_of(api, arn).await?;
    match table {
        None => api.engine.store().update_info(Resource::Database(&database), change).await?,
        Some(table) => api.engine.store().update_info(Resource::Table(&TableRef { database, table }), change).await?,
    };
    api.changed();
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ResourceArn {
    #[serde(rename = "ResourceARN")]
    resource_arn: String,
}

pub async fn list_tags(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    let input: ResourceArn = call.input()?;
    let (database, _, info) = resource_of(api, &input.resource_arn).await?;
    call.caller.require_read(&database)?;
    Ok(json!({"Tags": tag_list(&info.tags)}))
}

pub async fn tag_resource(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Input {
        #[serde(rename = "ResourceARN")]
        resource_arn: String,
        tags: Vec<Tag>,
    }
    let input: Input = call.input()?;
    call.caller.require(&Scope::Admin)?;
    let tags = tags_of(Some(input.tags))?;
    retag(api, &input.resource_arn, |info| info.tags.extend(tags.clone())).await?;
    Ok(json!({}))
}

pub async fn untag_resource(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Input {
        #[serde(rename = "ResourceARN")]
        resource_arn: String,
        tag_keys: Vec<String>,
    }
    let input: Input = call.input()?;
    call.caller.require(&Scope::Admin)?;
    retag(api, &input.resource_arn, |info| input.tag_keys.iter().for_each(|key| drop(info.tags.remove(key)))).await?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(max_results: Option<usize>, next_token: Option<&str>) -> ListInput {
        ListInput { database_name: None, next_token: next_token.map(str::to_string), max_results }
    }

    #[test]
    fn lists_page_by_the_last_name_and_the_last_page_has_no_token() {
        let entries: Vec<(String, usize)> = (0..25).map(|i| (format!("t{i:02}"), i)).collect();
        let (first, token) = page(&entries, &list(Some(20), None)).unwrap();
        assert_eq!((first.len(), token.as_deref()), (20, Some("t19")));
        let (second, token) = page(&entries, &list(Some(20), Some("t19"))).unwrap();
        assert_eq!((second, token), ((20..25).collect::<Vec<_>>(), None));
        assert_eq!(page(&entries, &list(None, None)).unwrap().0.len(), 25, "no MaxResults: everything");
        assert_eq!(page(&entries, &list(Some(20), None)).unwrap().0, (0..20).collect::<Vec<_>>());
        for bad in [0, 21] {
            assert_eq!(page(&entries, &list(Some(bad), None)).unwrap_err().code, "ValidationException");
        }
    }
}
