//! The shape checks every backend makes of an op's tensors, so that all of them refuse a
//! bad call with the same [`ComputeError::Shape`].

use crate::error::ComputeError;

/// `rows` rows asked of a tensor that holds `have`: an error naming `what` when it holds
/// fewer.
pub fn check_rows(
    op: &'static str,
    have: usize,
    rows: usize,
    what: &str,
) -> Result<(), ComputeError> {
    if rows > have {
        return Err(ComputeError::Shape {
            op,
            reason: format!("{what} holds {have} rows, {rows} asked"),
        });
    }
    Ok(())
}

/// A tensor of `got` columns where `want` are needed: an error naming `what` when they
/// differ.
pub fn check_cols(
    op: &'static str,
    got: usize,
    want: usize,
    what: &str,
) -> Result<(), ComputeError> {
    if got != want {
        return Err(ComputeError::Shape {
            op,
            reason: format!("{what} has {got} columns, expected {want}"),
        });
    }
    Ok(())
}

/// The input (`x_cols`) and output (`out_cols`) columns of a product with the weight `name`
/// of `rows` x `cols`; the weight is named only in the error, since this runs for every
/// product of every step.
pub fn check_product(
    op: &'static str,
    x_cols: usize,
    out_cols: usize,
    (name, rows, cols): (&str, usize, usize),
) -> Result<(), ComputeError> {
    check_cols(op, x_cols, cols, "input")
        .and_then(|_| check_cols(op, out_cols, rows, "output"))
        .map_err(|e| match e {
            ComputeError::Shape { op, reason } => ComputeError::Shape {
                op,
                reason: format!("{reason} (weight {name:?})"),
            },
            e => e,
        })
}
