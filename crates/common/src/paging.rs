//! REST paging: `?limit=&offset=` checked once ([`Page`]) and one page of
//! results ([`Paged`]) for every list endpoint.

use crate::error::{Error, Result};

/// The bounds of a list request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

impl Page {
    pub const DEFAULT_LIMIT: i64 = 50;
    pub const MAX_LIMIT: i64 = 500;

    /// `?limit=` (1 to 500, default 50) and `?offset=` (not negative,
    /// default 0).
    pub fn from_query(limit: Option<i64>, offset: Option<i64>) -> Result<Self> {
        let limit = limit.unwrap_or(Self::DEFAULT_LIMIT);
        let offset = offset.unwrap_or(0);
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(Error::Validation(format!(
                "limit must be between 1 and {}",
                Self::MAX_LIMIT
            )));
        }
        if offset < 0 {
            return Err(Error::Validation("offset must not be negative".into()));
        }
        Ok(Self { limit, offset })
    }

    /// This page's `items`, of `total` in all.
    pub fn of<T>(self, items: Vec<T>, total: i64) -> Paged<T> {
        Paged {
            items,
            total,
            limit: self.limit,
            offset: self.offset,
        }
    }
}

/// A page of results.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        assert_eq!(
            Page::from_query(None, None).unwrap(),
            Page {
                limit: 50,
                offset: 0
            }
        );
        assert!(Page::from_query(Some(500), Some(10)).is_ok());
        for (limit, offset) in [(Some(0), None), (Some(501), None), (None, Some(-1))] {
            assert!(matches!(
                Page::from_query(limit, offset),
                Err(Error::Validation(_))
            ));
        }
        let paged = Page::from_query(Some(2), Some(4))
            .unwrap()
            .of(vec![1, 2], 9);
        assert_eq!((paged.limit, paged.offset, paged.total), (2, 4, 9));
    }
}
