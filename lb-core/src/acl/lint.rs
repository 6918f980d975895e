//! Rules that can never match, duplicates and redundant rules.
