//! Authorization: who may do what, decided in one place ([`authorize`]).
//!
//! A principal has one role. Platform roles (`admin`, `operator`) have no tenant; tenant
//! roles (`owner`, `member`, `viewer`) belong to exactly one, and every object of another
//! tenant is invisible to them: asking for it answers 404, as if it did not exist. An API
//! token can narrow its user's rights with scopes (`read:vps`, `write:users`, `read:*`, `*`);
//! what it may do is what both the role and the scopes allow.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Clusters, nodes, placement, migrations and every tenant's VPS operations; no users,
    /// tenants or plans.
    Operator,
    /// Their tenant's users, tokens and VPSes.
    Owner,
    /// VPS lifecycle in their tenant.
    Member,
    /// Read-only in their tenant.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Owner,
        Role::Member,
        Role::Viewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Owner => "owner",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    /// Whether users with this role belong to a tenant.
    pub fn is_tenant_role(self) -> bool {
        matches!(self, Role::Owner | Role::Member | Role::Viewer)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (admin, operator, owner, member, viewer)"))
    }
}

/// What an operation touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Area {
    Tenants,
    Users,
    Tokens,
    Plans,
    Vps,
    /// Clusters, nodes, placement, migrations.
    Infra,
    /// Templates offered for new VPSes.
    Templates,
    Audit,
}

impl Area {
    pub const ALL: [Area; 8] = [
        Area::Tenants,
        Area::Users,
        Area::Tokens,
        Area::Plans,
        Area::Vps,
        Area::Infra,
        Area::Templates,
        Area::Audit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Area::Tenants => "tenants",
            Area::Users => "users",
            Area::Tokens => "tokens",
            Area::Plans => "plans",
            Area::Vps => "vps",
            Area::Infra => "infra",
            Area::Templates => "templates",
            Area::Audit => "audit",
        }
    }
}

/// Reading or changing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
}

/// Whose object an operation touches.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    /// Platform-wide (clusters, plans, the tenant list…).
    Platform,
    /// An object of this tenant.
    Tenant(&'a str),
    /// The principal's own credentials (their tokens, their MFA).
    Own,
}

impl Owner<'_> {
    /// The owner of objects of `tenant` (platform objects for `None`).
    pub fn of(tenant: Option<&str>) -> Owner<'_> {
        match tenant {
            Some(t) => Owner::Tenant(t),
            None => Owner::Platform,
        }
    }
}

/// An API token's scopes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scopes(BTreeSet<(Area, Access)>);

impl Scopes {
    /// Every right (a session, or a token with scope `*`).
    pub fn all() -> Scopes {
        let mut s = BTreeSet::new();
        for a in Area::ALL {
            s.insert((a, Access::Read));
            s.insert((a, Access::Write));
        }
        Scopes(s)
    }

    pub fn allows(&self, area: Area, access: Access) -> bool {
        self.0.contains(&(area, access))
    }

    /// Parses `read:AREA`, `write:AREA` (which implies read), `read:*`, `write:*` and `*`,
    /// separated by spaces or commas.
    pub fn parse(text: &str) -> Result<Scopes, String> {
        let mut s = BTreeSet::new();
        for word in text.split([' ', ',']).filter(|w| !w.is_empty()) {
            let (access, area) = match word.split_once(':') {
                None if word == "*" => (Access::Write, "*"),
                Some(("read", area)) => (Access::Read, area),
                Some(("write", area)) => (Access::Write, area),
                _ => {
                    return Err(format!(
                        "bad scope {word:?}: use read:AREA, write:AREA or *"
                    ))
                }
            };
            let areas: Vec<Area> = if area == "*" {
                Area::ALL.to_vec()
            } else {
                vec![Area::ALL
                    .into_iter()
                    .find(|a| a.as_str() == area)
                    .ok_or_else(|| {
                        format!(
                            "unknown scope area {area:?} (tenants, users, tokens, plans, vps, \
                             infra, templates, audit)"
                        )
                    })?]
            };
            for a in areas {
                s.insert((a, Access::Read));
                if access == Access::Write {
                    s.insert((a, Access::Write));
                }
            }
        }
        if s.is_empty() {
            return Err("no scopes given".into());
        }
        Ok(Scopes(s))
    }

    /// The canonical text form (`write:` where both rights are there, else `read:`).
    pub fn to_text(&self) -> String {
        if *self == Scopes::all() {
            return "*".into();
        }
        let mut out = Vec::new();
        for a in Area::ALL {
            if self.allows(a, Access::Write) {
                out.push(format!("write:{}", a.as_str()));
            } else if self.allows(a, Access::Read) {
                out.push(format!("read:{}", a.as_str()));
            }
        }
        out.join(" ")
    }

    /// The scopes of `self` that `role` has at all: a token never holds more than its user.
    pub fn within_role(&self, role: Role) -> bool {
        self.0.iter().all(|&(area, access)| {
            role_allows(role, area, access, Owner::Own, true)
                || role_allows(role, area, access, Owner::Platform, true)
                || role_allows(role, area, access, Owner::Tenant(""), true)
        })
    }
}

/// Who is asking.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub username: String,
    pub role: Role,
    pub tenant_id: Option<String>,
    /// What the credential allows (all, for a session).
    pub scopes: Scopes,
    pub via: Via,
}

/// How the principal authenticated.
#[derive(Debug, Clone)]
pub enum Via {
    /// A session cookie (mutations need the CSRF header) or a session token as bearer.
    Session {
        token_hash: String,
        csrf_token: String,
    },
    /// An API token.
    Token { id: String },
}

impl Principal {
    /// The tenant a listing covers: a tenant user's own, whatever was asked; for platform
    /// users, the one asked for (`None`: every tenant).
    pub fn listing_scope<'a>(&'a self, asked: Option<&'a str>) -> Option<&'a str> {
        if self.role.is_tenant_role() {
            self.tenant_id.as_deref()
        } else {
            asked
        }
    }

    /// The principal key idempotency records and audit entries use.
    pub fn key(&self) -> String {
        format!("user:{}", self.user_id)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The object belongs to another tenant: it must look absent.
    NotFound,
    /// The object is visible but the role or token does not allow the operation.
    Forbidden,
}

/// The one decision point: may `who` perform `access` on `area` for an object owned by
/// `owner`?
pub fn authorize(
    who: &Principal,
    area: Area,
    access: Access,
    owner: Owner<'_>,
) -> Result<(), Denied> {
    if let Owner::Tenant(t) = owner {
        if who.role.is_tenant_role() && who.tenant_id.as_deref() != Some(t) {
            return Err(Denied::NotFound);
        }
    }
    let in_own_tenant = match owner {
        Owner::Tenant(t) => who.tenant_id.as_deref() == Some(t),
        _ => false,
    };
    if !role_allows(who.role, area, access, owner, in_own_tenant) {
        return Err(Denied::Forbidden);
    }
    if !who.scopes.allows(area, access) {
        return Err(Denied::Forbidden);
    }
    Ok(())
}

/// The role table. `own_tenant`: the object is in the principal's tenant (checked by the
/// caller for tenant objects).
fn role_allows(role: Role, area: Area, access: Access, owner: Owner<'_>, own_tenant: bool) -> bool {
    use Access::*;
    use Area::*;
    let read = access == Read;
    match role {
        Role::Admin => true,
        Role::Operator => match area {
            Infra | Vps | Templates => true,
            Tenants | Plans => read,
            Tokens => matches!(owner, Owner::Own),
            Users | Audit => false,
        },
        Role::Owner | Role::Member | Role::Viewer => {
            let tenant_obj = matches!(owner, Owner::Tenant(_)) && own_tenant;
            match (area, owner) {
                // Everyone manages their own tokens and MFA (within their role's rights).
                (Tokens, Owner::Own) => true,
                (Tokens, Owner::Tenant(_)) => role == Role::Owner && tenant_obj,
                (Plans | Templates, Owner::Platform) => read,
                (Tenants, Owner::Tenant(_)) => tenant_obj && read,
                (Users, Owner::Tenant(_)) => tenant_obj && (read || role == Role::Owner),
                (Vps, Owner::Tenant(_)) => tenant_obj && (read || role != Role::Viewer),
                (Audit, Owner::Tenant(_)) => tenant_obj && read && role == Role::Owner,
                _ => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn who(role: Role, tenant: Option<&str>) -> Principal {
        Principal {
            user_id: "u".into(),
            username: "u".into(),
            role,
            tenant_id: tenant.map(str::to_string),
            scopes: Scopes::all(),
            via: Via::Token { id: "t".into() },
        }
    }

    #[test]
    fn other_tenants_objects_are_invisible() {
        for role in [Role::Owner, Role::Member, Role::Viewer] {
            let p = who(role, Some("a"));
            assert_eq!(
                authorize(&p, Area::Vps, Access::Read, Owner::Tenant("b")),
                Err(Denied::NotFound)
            );
            assert_eq!(
                authorize(&p, Area::Vps, Access::Read, Owner::Tenant("a")),
                Ok(())
            );
        }
    }

    #[test]
    fn role_table() {
        let op = who(Role::Operator, None);
        assert!(authorize(&op, Area::Vps, Access::Write, Owner::Tenant("x")).is_ok());
        assert_eq!(
            authorize(&op, Area::Users, Access::Read, Owner::Tenant("x")),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            authorize(&op, Area::Plans, Access::Write, Owner::Platform),
            Err(Denied::Forbidden)
        );
        let viewer = who(Role::Viewer, Some("a"));
        assert_eq!(
            authorize(&viewer, Area::Vps, Access::Write, Owner::Tenant("a")),
            Err(Denied::Forbidden)
        );
        let member = who(Role::Member, Some("a"));
        assert_eq!(
            authorize(&member, Area::Users, Access::Write, Owner::Tenant("a")),
            Err(Denied::Forbidden)
        );
        let owner = who(Role::Owner, Some("a"));
        assert!(authorize(&owner, Area::Users, Access::Write, Owner::Tenant("a")).is_ok());
        assert_eq!(
            authorize(&owner, Area::Infra, Access::Read, Owner::Platform),
            Err(Denied::Forbidden)
        );
    }

    #[test]
    fn token_scopes_narrow_a_role() {
        let mut p = who(Role::Admin, None);
        p.scopes = Scopes::parse("read:vps").unwrap();
        assert!(authorize(&p, Area::Vps, Access::Read, Owner::Tenant("a")).is_ok());
        assert_eq!(
            authorize(&p, Area::Vps, Access::Write, Owner::Tenant("a")),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            authorize(&p, Area::Users, Access::Read, Owner::Tenant("a")),
            Err(Denied::Forbidden)
        );
    }

    #[test]
    fn scope_text() {
        assert_eq!(Scopes::parse("*").unwrap(), Scopes::all());
        assert_eq!(Scopes::parse("write:*").unwrap(), Scopes::all());
        assert_eq!(
            Scopes::parse("read:vps,write:tokens").unwrap().to_text(),
            "write:tokens read:vps"
        );
        assert!(Scopes::parse("").is_err());
        assert!(Scopes::parse("read:nothing").is_err());
        assert!(Scopes::parse("delete:vps").is_err());
        assert!(Scopes::parse("read:vps").unwrap().within_role(Role::Viewer));
        assert!(!Scopes::parse("write:vps")
            .unwrap()
            .within_role(Role::Viewer));
        assert!(!Scopes::parse("write:users")
            .unwrap()
            .within_role(Role::Operator));
    }

    proptest! {
        #[test]
        fn scope_parsing_never_panics_and_round_trips(text in "[a-z:*, ]{0,40}") {
            if let Ok(s) = Scopes::parse(&text) {
                prop_assert_eq!(Scopes::parse(&s.to_text()).unwrap(), s);
            }
        }
    }
}
