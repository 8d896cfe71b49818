//! AWS Signature Version 4, checked rather than made: the callers of the Timestream API (boto3,
//! the AWS CLI, the Go SDK under Telegraf and Grafana, awswrangler) sign every request with an
//! access key id and a secret access key. Lodestone's key id is a token's id and the secret
//! access key the token's secret ([`crate::auth::TokenFile::issue_signing`]).
//!
//! Plain functions, no I/O: [`Authorization::parse`] reads the `Authorization` header,
//! [`canonical_request`] and [`string_to_sign`] rebuild what the client signed from the request
//! as received, and [`signature`] is the HMAC chain. [`verify`] puts them together with the
//! clock check. Failures carry the codes the AWS SDKs know ([`SignatureError::code`]).

use axum::http::HeaderMap;

/// The only algorithm SigV4 callers use.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// How far a request's `X-Amz-Date` may be from the server's clock, either way (AWS's bound).
pub const CLOCK_SKEW_NS_MAX: i64 = 15 * 60 * 1_000_000_000;

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: String,
    /// `YYYYMMDD`, the credential scope's date.
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lower-case header names, in the order signed (sorted by the client).
    pub signed_headers: Vec<String>,
    /// Lower-case hex.
    pub signature: String,
}

/// Why a signed request is refused. Codes and statuses are those the AWS SDKs expect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("{0}")]
    Incomplete(String),
    #[error("The security token included in the request is invalid")]
    UnknownKey,
    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.")]
    Mismatch,
    #[error("Signature expired: {request} is now earlier or later than {now} by more than 15 minutes")]
    Expired { request: String, now: String },
    #[error("Credential should be scoped to a valid service: '{expected}', not '{got}'")]
    WrongService { expected: String, got: String },
}

impl SignatureError {
    /// The AWS error code (`__type`).
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Incomplete(_) => "IncompleteSignatureException",
            SignatureError::UnknownKey => "UnrecognizedClientException",
            SignatureError::Mismatch | SignatureError::Expired { .. } | SignatureError::WrongService { .. } => "InvalidSignatureException",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            SignatureError::Incomplete(_) => 400,
            _ => 403,
        }
    }
}

impl Authorization {
    /// Reads an `Authorization` header value; `None` when it is not SigV4 at all (a bearer
    /// token, say).
    pub fn parse(value: &str) -> Option<Result<Authorization, SignatureError>> {
        let rest = value.trim().strip_prefix(ALGORITHM)?;
        Some(Self::parse_fields(rest))
    }

    fn parse_fields(fields: &str) -> Result<Authorization, SignatureError> {
        let incomplete = |what: &str| SignatureError::Incomplete(format!("Authorization header requires '{what}' parameter"));
        let mut credential = None;
        let mut signed_headers = None;
        let mut signature = None;
        for field in fields.split(',') {
            let Some((key, value)) = field.trim().split_once('=') else { continue };
            match key.trim() {
                "Credential" => credential = Some(value.trim()),
                "SignedHeaders" => signed_headers = Some(value.trim()),
                "Signature" => signature = Some(value.trim()),
                _ => {}
            }
        }
        let credential = credential.ok_or_else(|| incomplete("Credential"))?;
        let signed_headers = signed_headers.ok_or_else(|| incomplete("SignedHeaders"))?;
        let signature = signature.ok_or_else(|| incomplete("Signature"))?;
        // AKID/YYYYMMDD/region/service/aws4_request; the key id itself holds no '/'.
        let parts: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, "aws4_request"] = parts.as_slice() else {
            return Err(SignatureError::Incomplete(format!("Credential {credential:?} is not KEY/DATE/REGION/SERVICE/aws4_request")));
        };
        if access_key_id.is_empty() || date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SignatureError::Incomplete(format!("Credential {credential:?} is not KEY/DATE/REGION/SERVICE/aws4_request")));
        }
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SignatureError::Incomplete("Signature must be 64 hex digits".into()));
        }
        let signed_headers: Vec<String> = signed_headers.split(';').map(str::to_ascii_lowercase).collect();
        if signed_headers.iter().any(String::is_empty) || !signed_headers.iter().any(|h| h == "host") {
            return Err(SignatureError::Incomplete("SignedHeaders must name host".into()));
        }
        Ok(Authorization {
            access_key_id: access_key_id.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
            signed_headers,
            signature: signature.to_ascii_lowercase(),
        })
    }

    /// `DATE/REGION/SERVICE/aws4_request`.
    pub fn scope(&self) -> String {
        format!("{}/{}/{}/aws4_request", self.date, self.region, self.service)
    }
}

/// A request as the server received it: what SigV4 covers.
pub struct Received<'a> {
    pub method: &'a str,
    /// The path as sent (already percent-encoded by the client).
    pub path: &'a str,
    /// The query string as sent, without `?` (empty when none).
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    /// The host the client addressed when there is no `Host` header (HTTP/2's `:authority`).
    pub authority: Option<&'a str>,
    pub body: &'a [u8],
}

/// The canonical request SigV4 hashes: method, path, sorted query, the signed headers with their
/// values trimmed and inner runs of spaces folded, the list of signed headers, and the payload's
/// SHA-256 (`x-amz-content-sha256` when the client sent it).
pub fn canonical_request(request: &Received<'_>, signed_headers: &[String]) -> String {
    let path = if request.path.is_empty() { "/" } else { request.path };
    let mut query: Vec<(&str, &str)> = request.query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))).collect();
    query.sort_unstable();
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut headers = String::new();
    for name in signed_headers {
        let values: Vec<String> = request.headers.get_all(name.as_str()).iter().map(|v| fold_spaces(&String::from_utf8_lossy(v.as_bytes()))).collect();
        let value = match (values.is_empty(), name.as_str(), request.authority) {
            (true, "host", Some(authority)) => authority.to_string(),
            _ => values.join(","),
        };
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&value);
        headers.push('\n');
    }
    let payload = match request.headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok()) {
        Some(declared) => declared.to_string(),
        None => hex(ring::digest::digest(&ring::digest::SHA256, request.body).as_ref()),
    };
    format!("{}\n{path}\n{}\n{headers}\n{}\n{payload}", request.method, query.join("&"), signed_headers.join(";"))
}

/// Trims a header value and folds every run of spaces inside it into one, as SigV4 canonicalises.
fn fold_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hex(sha256(canonical_request))}`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    let hashed = hex(ring::digest::digest(&ring::digest::SHA256, canonical_request.as_bytes()).as_ref());
    format!("{ALGORITHM}\n{amz_date}\n{scope}\n{hashed}")
}

/// The signature (lower-case hex) of `string_to_sign` under `secret` for the scope's date,
/// region and service.
pub fn signature(secret: &str, authorization: &Authorization, string_to_sign: &str) -> String {
    let mac = |key: &[u8], data: &str| ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), data.as_bytes());
    let date = mac(format!("AWS4{secret}").as_bytes(), &authorization.date);
    let region = mac(date.as_ref(), &authorization.region);
    let service = mac(region.as_ref(), &authorization.service);
    let signing = mac(service.as_ref(), "aws4_request");
    hex(mac(signing.as_ref(), string_to_sign).as_ref())
}

/// Checks `request`'s signature: the scope's service is `service`, `X-Amz-Date` is within
/// [`CLOCK_SKEW_NS_MAX`] of `now_ns` and on the scope's date, and the signature matches the one
/// made with `secret`. The caller looks the secret up by `authorization.access_key_id`.
pub fn verify(request: &Received<'_>, authorization: &Authorization, secret: &str, service: &str, now_ns: i64) -> Result<(), SignatureError> {
    if authorization.service != service {
        return Err(SignatureError::WrongService { expected: service.into(), got: authorization.service.clone() });
    }
    let amz_date = request
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| SignatureError::Incomplete("a SigV4 request needs an X-Amz-Date header".into()))?;
    let request_ns = parse_amz_date(amz_date).ok_or_else(|| SignatureError::Incomplete(format!("X-Amz-Date {amz_date:?} is not YYYYMMDDTHHMMSSZ")))?;
    if request_ns.abs_diff(now_ns) > CLOCK_SKEW_NS_MAX as u64 {
        return Err(SignatureError::Expired { request: amz_date.to_string(), now: format_amz_date(now_ns) });
    }
    if !authorization.signed_headers.iter().any(|h| h == "x-amz-date") || !amz_date.starts_with(&authorization.date) {
        return Err(SignatureError::Mismatch);
    }
    let canonical = canonical_request(request, &authorization.signed_headers);
    let expected = signature(secret, authorization, &string_to_sign(amz_date, &authorization.scope(), &canonical));
    match crate::auth::constant_time_eq(expected.as_bytes(), authorization.signature.as_bytes()) {
        true => Ok(()),
        false => Err(SignatureError::Mismatch),
    }
}

/// The headers that sign a request (for Lodestone's own clients: the simulator and tests):
/// `x-amz-date` and `authorization`, over `host`, `x-amz-date` and every header in `headers`
/// (lower-case names), at `now_ns`.
pub fn sign(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    key: &str,
    secret: &str,
    region: &str,
    service: &str,
    now_ns: i64,
) -> [(&'static str, String); 2] {
    let amz_date = format_amz_date(now_ns);
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (axum::http::HeaderName::from_bytes(name.as_bytes()), axum::http::HeaderValue::from_str(value)) {
            map.insert(name, value);
        }
    }
    map.insert("host", axum::http::HeaderValue::from_str(host).unwrap_or(axum::http::HeaderValue::from_static("")));
    map.insert("x-amz-date", axum::http::HeaderValue::from_str(&amz_date).expect("a date is a header value"));
    let mut signed_headers: Vec<String> = map.keys().map(|name| name.as_str().to_string()).collect();
    signed_headers.sort();
    let unsigned = Authorization {
        access_key_id: key.into(),
        date: amz_date[..8].into(),
        region: region.into(),
        service: service.into(),
        signed_headers,
        signature: String::new(),
    };
    let received = Received { method, path, query: "", headers: &map, authority: None, body };
    let canonical = canonical_request(&received, &unsigned.signed_headers);
    let signature = signature(secret, &unsigned, &string_to_sign(&amz_date, &unsigned.scope(), &canonical));
    let authorization = format!("{ALGORITHM} Credential={key}/{}, SignedHeaders={}, Signature={signature}", unsigned.scope(), unsigned.signed_headers.join(";"));
    [("x-amz-date", amz_date), ("authorization", authorization)]
}

/// `YYYYMMDDTHHMMSSZ` as nanoseconds since the Unix epoch.
pub fn parse_amz_date(text: &str) -> Option<i64> {
    let time = chrono::NaiveDateTime::parse_from_str(text, "%Y%m%dT%H%M%SZ").ok()?;
    time.and_utc().timestamp_nanos_opt()
}

/// Nanoseconds since the Unix epoch as `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).format("%Y%m%dT%H%M%SZ").to_string()
}

/// An error as AWS JSON 1.0 services answer it: `{"__type": code, "Message": message}` with
/// `x-amzn-ErrorType` and the protocol's content type, which every AWS SDK parses into its
/// exception (boto3's `client.exceptions.<code>`).
pub fn aws_json_error(status: u16, code: &str, message: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({"__type": code, "Message": message}).to_string();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static(AWS_JSON));
    if let Ok(value) = axum::http::HeaderValue::from_str(code) {
        headers.insert("x-amzn-errortype", value);
    }
    response
}

/// The content type of AWS JSON 1.0 requests and answers.
pub const AWS_JSON: &str = "application/x-amz-json-1.0";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signed by botocore 1.44 (`SigV4Auth(Credentials(KEY, SECRET), "timestream", "us-east-1")`).
    const KEY: &str = "lt_0123456789abcdef";
    const BODY: &str = r#"{"DatabaseName": "fleet"}"#;
    const AMZ_DATE: &str = "20261208T013907Z";
    const AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=lt_0123456789abcdef/20261208/us-east-1/timestream/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=c3b752a8a6a08621e2489b05475300caff6bced21b0d624730441dc6a7696892";

    fn secret() -> String {
        "f".repeat(64)
    }

    fn headers(amz_date: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/x-amz-json-1.0".parse().unwrap());
        headers.insert("x-amz-target", "Timestream_20181101.DescribeDatabase".parse().unwrap());
        headers.insert("x-amz-date", amz_date.parse().unwrap());
        headers.insert("host", "127.0.0.1:8080".parse().unwrap());
        headers
    }

    fn check(headers: &HeaderMap, body: &str, secret: &str, now_ns: i64) -> Result<(), SignatureError> {
        let authorization = Authorization::parse(AUTHORIZATION).unwrap().unwrap();
        let request = Received { method: "POST", path: "/", query: "", headers, authority: None, body: body.as_bytes() };
        verify(&request, &authorization, secret, "timestream", now_ns)
    }

    fn signed_at() -> i64 {
        parse_amz_date(AMZ_DATE).unwrap()
    }

    #[test]
    fn a_botocore_signature_verifies() {
        assert_eq!(check(&headers(AMZ_DATE), BODY, &secret(), signed_at() + 60 * 1_000_000_000), Ok(()));
    }

    #[test]
    fn a_wrong_secret_or_a_changed_byte_is_a_mismatch() {
        assert_eq!(check(&headers(AMZ_DATE), BODY, &"e".repeat(64), signed_at()), Err(SignatureError::Mismatch));
        assert_eq!(check(&headers(AMZ_DATE), r#"{"DatabaseName": "fleeT"}"#, &secret(), signed_at()), Err(SignatureError::Mismatch));
        let mut other_target = headers(AMZ_DATE);
        other_target.insert("x-amz-target", "Timestream_20181101.DeleteDatabase".parse().unwrap());
        assert_eq!(check(&other_target, BODY, &secret(), signed_at()), Err(SignatureError::Mismatch));
    }

    #[test]
    fn a_request_outside_fifteen_minutes_is_expired_at_the_bound_it_is_not() {
        let minute = 60 * 1_000_000_000;
        assert_eq!(check(&headers(AMZ_DATE), BODY, &secret(), signed_at() + 15 * minute), Ok(()));
        assert_eq!(check(&headers(AMZ_DATE), BODY, &secret(), signed_at() - 15 * minute), Ok(()));
        let late = check(&headers(AMZ_DATE), BODY, &secret(), signed_at() + 15 * minute + 1).unwrap_err();
        assert_eq!(late.code(), "InvalidSignatureException");
        assert!(late.to_string().starts_with("Signature expired"), "{late}");
        assert!(check(&headers(AMZ_DATE), BODY, &secret(), signed_at() - 20 * minute).is_err());
    }

    #[test]
    fn header_values_are_folded_and_host_may_come_from_the_authority() {
        let mut spaced = headers(AMZ_DATE);
        spaced.insert("content-type", "  application/x-amz-json-1.0 ".parse().unwrap());
        assert_eq!(check(&spaced, BODY, &secret(), signed_at()), Ok(()));
        let mut no_host = headers(AMZ_DATE);
        no_host.remove("host");
        let authorization = Authorization::parse(AUTHORIZATION).unwrap().unwrap();
        let request = Received { method: "POST", path: "/", query: "", headers: &no_host, authority: Some("127.0.0.1:8080"), body: BODY.as_bytes() };
        assert_eq!(verify(&request, &authorization, &secret(), "timestream", signed_at()), Ok(()));
    }

    #[test]
    fn authorization_headers_parse_or_say_what_is_missing() {
        let parsed = Authorization::parse(AUTHORIZATION).unwrap().unwrap();
        assert_eq!((parsed.access_key_id.as_str(), parsed.region.as_str(), parsed.service.as_str()), (KEY, "us-east-1", "timestream"));
        assert_eq!(parsed.signed_headers, ["content-type", "host", "x-amz-date", "x-amz-target"]);
        assert!(Authorization::parse("Bearer abc.def").is_none(), "a bearer token is not SigV4");
        let zeros = "0".repeat(64);
        let cases = [
            (format!("AWS4-HMAC-SHA256 SignedHeaders=host, Signature={zeros}"), "Credential"),
            (format!("AWS4-HMAC-SHA256 Credential=a/20261208/r/s/aws4_request, Signature={zeros}"), "SignedHeaders"),
            (format!("AWS4-HMAC-SHA256 Credential=a/2026/r/s/aws4_request, SignedHeaders=host, Signature={zeros}"), "KEY/DATE"),
            ("AWS4-HMAC-SHA256 Credential=a/20261208/r/s/aws4_request, SignedHeaders=host, Signature=xyz".to_string(), "64 hex"),
            (format!("AWS4-HMAC-SHA256 Credential=a/20261208/r/s/aws4_request, SignedHeaders=x-amz-date, Signature={zeros}"), "host"),
        ];
        for (header, says) in cases {
            let error = Authorization::parse(&header).unwrap().unwrap_err();
            assert_eq!(error.code(), "IncompleteSignatureException");
            assert!(error.to_string().contains(says), "{header}: {error}");
        }
    }

    #[test]
    fn what_sign_makes_verifies() {
        let now = signed_at();
        let [(_, date), (_, authorization)] = sign("POST", "127.0.0.1:8080", "/", &[("x-amz-target", "Timestream_20181101.Query")], b"{}", KEY, &secret(), "us-east-1", "timestream", now);
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:8080".parse().unwrap());
        headers.insert("x-amz-date", date.parse().unwrap());
        headers.insert("x-amz-target", "Timestream_20181101.Query".parse().unwrap());
        let parsed = Authorization::parse(&authorization).unwrap().unwrap();
        let request = Received { method: "POST", path: "/", query: "", headers: &headers, authority: None, body: b"{}" };
        assert_eq!(verify(&request, &parsed, &secret(), "timestream", now), Ok(()));
    }

    #[test]
    fn a_scope_for_another_service_is_refused() {
        let authorization = Authorization { service: "s3".into(), ..Authorization::parse(AUTHORIZATION).unwrap().unwrap() };
        let headers = headers(AMZ_DATE);
        let request = Received { method: "POST", path: "/", query: "", headers: &headers, authority: None, body: BODY.as_bytes() };
        assert_eq!(verify(&request, &authorization, &secret(), "timestream", signed_at()).unwrap_err().code(), "InvalidSignatureException");
    }
}
