//! `[lambda]`: what the Lambda door checks in the ARNs callers name.

use serde::Deserialize;

/// `[lambda]`: what the ARNs callers name must say, when set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaSettings {
    /// An ARN naming another account is a function that does not exist.
    pub account_id: Option<String>,
    /// Likewise for another region.
    pub region: Option<String>,
}

impl LambdaSettings {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(a) = &self.account_id
            && (a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err((
                "lambda.account_id".into(),
                format!("{a:?} is not 12 digits"),
            ));
        }
        if let Some(r) = &self.region
            && (r.is_empty() || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err((
                "lambda.region".into(),
                format!("{r:?} is not a region name"),
            ));
        }
        Ok(())
    }
}
