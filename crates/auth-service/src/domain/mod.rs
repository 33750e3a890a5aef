//! Types and rules of the auth domain, free of I/O.

mod permission;
mod user;

pub use permission::{ALL_PERMISSIONS, Permission, PermissionCode};
pub use user::{Email, NewPassword, RoleName, Username};
