//! Reading columns with `try_get`: a value of an unexpected type (a schema
//! changed by hand, a column added by a newer Postern) is a
//! [`StoreError::Corrupt`] naming the column, never a panic.

use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

use crate::StoreError;

/// Column `index` of `row`.
pub(crate) fn get<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, StoreError> {
    row.try_get(index).map_err(|error| {
        let name = row.columns().get(index).map_or("?", |c| c.name());
        StoreError::Corrupt(format!("column {name}: {error}"))
    })
}
