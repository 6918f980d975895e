//! The classifiers under comparison, behind one trait.

use lb_core::acl::{linear_classify, Classifier, FlowKey, MatchRule};

/// A packet classifier answering "first matching rule" for bursts of keys.
pub trait Engine {
    /// A short name for the report.
    fn name(&self) -> String;
    /// Classifies `keys[i]` into `out[i]`.
    fn classify_burst(&self, keys: &[FlowKey], out: &mut [Option<u32>]);
    /// Bytes of the compiled form, if known.
    fn memory_bytes(&self) -> Option<usize>;
}

/// The reference: a linear scan of the rules.
#[derive(Debug)]
pub struct Linear<'a> {
    pub rules: &'a [MatchRule],
}

impl Engine for Linear<'_> {
    fn name(&self) -> String {
        "linear".into()
    }

    fn classify_burst(&self, keys: &[FlowKey], out: &mut [Option<u32>]) {
        for (k, o) in keys.iter().zip(out.iter_mut()) {
            *o = linear_classify(self.rules, k);
        }
    }

    fn memory_bytes(&self) -> Option<usize> {
        None
    }
}

/// `lb_core::acl::Classifier`.
#[derive(Debug)]
pub struct Compiled(pub Classifier);

impl Engine for Compiled {
    fn name(&self) -> String {
        "compiled".into()
    }

    fn classify_burst(&self, keys: &[FlowKey], out: &mut [Option<u32>]) {
        self.0.classify_burst(keys, out);
    }

    fn memory_bytes(&self) -> Option<usize> {
        Some(self.0.memory_bytes())
    }
}
