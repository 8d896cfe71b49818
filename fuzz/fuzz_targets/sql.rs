//! The SQL front, before planning: the operator bound, Timestream's interval literals, the parser
//! (DataFusion's dialect and recursion limit), `measure_value::<type>`, Timestream's function
//! rewrites (`query_service::engine::parse_statement`), and SHOW. Any text is answered or refused,
//! never a panic or a stack overflow.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lodestone_kit::auth::Principal;
use query_service::config::LimitsConfig;
use datafusion::execution::{SessionState, SessionStateBuilder};

fuzz_target!(|data: &[u8]| {
    static STATE: OnceLock<SessionState> = OnceLock::new();
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let state = STATE.get_or_init(|| SessionStateBuilder::new().with_default_features().build());
    let _ = query_service::show::answer(sql, &lodestone_store::Snapshot::default(), &Principal::anonymous());
    let _ = query_service::engine::parse_statement(state, sql, &LimitsConfig::default());
});
