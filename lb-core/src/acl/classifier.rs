//! The compiled classifier.

use super::{FlowKey, MatchRule};

/// Placeholder: a linear scan until the compiled form lands.
#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<MatchRule>,
}

impl Classifier {
    /// Compiles `rules`; index order is precedence (0 first).
    pub fn build(rules: &[MatchRule]) -> Classifier {
        Classifier {
            rules: rules.to_vec(),
        }
    }

    /// The index of the first rule matching `key`.
    pub fn classify(&self, key: &FlowKey) -> Option<u32> {
        super::linear_classify(&self.rules, key)
    }
}
