//! Port and expression types. The engine knows the scalar types; stage crates declare the
//! artifact types (checkpoint, gradient, ...) by name in the registry.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Type {
    Int,
    Float,
    Text,
    Bool,
    Duration,
    List(Box<Type>),
    /// An artifact or record type declared by a stage crate.
    Named(&'static str),
    /// Accepts or produces anything (environment values, untyped list items).
    Any,
}

impl Type {
    pub fn list(of: Type) -> Type {
        Type::List(Box::new(of))
    }

    /// Whether a value of type `given` may flow where `self` is expected.
    pub fn accepts(&self, given: &Type) -> bool {
        match (self, given) {
            (Type::Any, _) | (_, Type::Any) => true,
            (Type::Float, Type::Int) => true,
            (Type::List(a), Type::List(b)) => a.accepts(b),
            (a, b) => a == b,
        }
    }

    pub fn is_numeric(&self) -> bool {
        matches!(self, Type::Int | Type::Float | Type::Any)
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Type::Int => f.write_str("int"),
            Type::Float => f.write_str("float"),
            Type::Text => f.write_str("text"),
            Type::Bool => f.write_str("bool"),
            Type::Duration => f.write_str("duration"),
            Type::List(of) => write!(f, "list<{of}>"),
            Type::Named(name) => f.write_str(name),
            Type::Any => f.write_str("any"),
        }
    }
}

/// A named type declared by a stage crate.
#[derive(Clone, Debug)]
pub struct TypeDef {
    pub name: &'static str,
    pub doc: &'static str,
    /// Scalars (a revision, a digest) can be written into strings; artifacts only flow into ports.
    pub scalar: bool,
    /// Fields readable as `item.FIELD` when the type is a list item.
    pub fields: Vec<(&'static str, Type)>,
}

impl TypeDef {
    pub fn artifact(name: &'static str, doc: &'static str) -> Self {
        Self {
            name,
            doc,
            scalar: false,
            fields: Vec::new(),
        }
    }

    pub fn scalar(name: &'static str, doc: &'static str) -> Self {
        Self {
            scalar: true,
            ..Self::artifact(name, doc)
        }
    }

    pub fn record(
        name: &'static str,
        doc: &'static str,
        fields: Vec<(&'static str, Type)>,
    ) -> Self {
        Self {
            fields,
            ..Self::artifact(name, doc)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptance() {
        assert!(Type::Float.accepts(&Type::Int));
        assert!(!Type::Int.accepts(&Type::Float));
        assert!(Type::list(Type::Named("gradient")).accepts(&Type::list(Type::Any)));
        assert!(!Type::Named("gradient").accepts(&Type::list(Type::Named("gradient"))));
        assert_eq!(Type::list(Type::Named("miner")).to_string(), "list<miner>");
    }
}
