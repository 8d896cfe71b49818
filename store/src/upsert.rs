//! Timestream's upsert rule on (dimensions, measure_name, time), as a pure decision.

use lodestone_model::MeasureValue;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpsertDecision {
    /// No record under the key yet.
    Insert,
    /// A higher version: the new record replaces the old.
    Replace,
    /// The same value again at a version that is not higher: nothing changes.
    NoOp,
    /// Another value at a version that is not higher: refused; carries the existing version.
    Reject { existing_version: u64 },
}

/// Decides what a write of `new` (value, version) does given what exists under its key.
pub fn decide(existing: Option<(&MeasureValue, u64)>, new: (&MeasureValue, u64)) -> UpsertDecision {
    let Some((old_value, old_version)) = existing else { return UpsertDecision::Insert };
    let (new_value, new_version) = new;
    if new_version > old_version {
        UpsertDecision::Replace
    } else if new_value.same_as(old_value) {
        UpsertDecision::NoOp
    } else {
        UpsertDecision::Reject { existing_version: old_version }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodestone_model::Scalar;

    fn v(x: f64) -> MeasureValue {
        MeasureValue::Single(Scalar::Double(x))
    }

    #[test]
    fn rules() {
        let check = |existing: Option<(f64, u64)>, new: (f64, u64), expected| {
            let old = existing.map(|(x, ver)| (v(x), ver));
            let got = decide(old.as_ref().map(|(val, ver)| (val, *ver)), (&v(new.0), new.1));
            assert_eq!(got, expected, "existing {existing:?} new {new:?}");
        };
        check(None, (1.0, 1), UpsertDecision::Insert);
        check(Some((1.0, 1)), (1.0, 1), UpsertDecision::NoOp);
        check(Some((1.0, 2)), (1.0, 1), UpsertDecision::NoOp);
        check(Some((1.0, 1)), (2.0, 2), UpsertDecision::Replace);
        check(Some((1.0, 1)), (1.0, 2), UpsertDecision::Replace);
        check(Some((1.0, 1)), (2.0, 1), UpsertDecision::Reject { existing_version: 1 });
        check(Some((1.0, 3)), (2.0, 2), UpsertDecision::Reject { existing_version: 3 });
        check(Some((f64::NAN, 1)), (f64::NAN, 1), UpsertDecision::NoOp);
    }
}
