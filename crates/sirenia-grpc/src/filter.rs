//! The `$all` filters of the protocol: on the stream name or the event type, by prefixes or a
//! regular expression, with a checkpoint window for subscriptions.

use regex::{Regex, RegexBuilder};
use sirenia_core::RecordedEvent;
use tonic::Status;

use crate::proto::streams::read_req::options::{FilterOptions, filter_options};

/// The most prefixes one filter may list.
pub const MAX_FILTER_PREFIXES: usize = 1_000;
/// The longest prefix or regular expression a filter may hold, in bytes.
pub const MAX_FILTER_EXPRESSION_BYTES: usize = 4_096;
/// The most memory a compiled filter expression may use, in bytes.
pub const MAX_FILTER_REGEX_SIZE: usize = 1024 * 1024;
/// Events examined between two checkpoints of a filtered subscription when the client gives no
/// window (EventStoreDB's default window).
pub const DEFAULT_CHECKPOINT_WINDOW: u64 = 32;

/// What a filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    StreamName,
    EventType,
}

/// How it matches.
#[derive(Debug, Clone)]
enum Matcher {
    Prefixes(Vec<String>),
    Regex(Regex),
}

/// A parsed `$all` filter.
#[derive(Debug, Clone)]
pub(crate) struct LogFilter {
    target: Target,
    matcher: Matcher,
    /// Events examined between checkpoints (subscriptions).
    pub(crate) checkpoint_interval: u64,
}

impl LogFilter {
    /// Parses and validates the client's filter options.
    pub(crate) fn parse(options: &FilterOptions) -> Result<Self, Status> {
        let (target, expression) = match &options.filter {
            Some(filter_options::Filter::StreamIdentifier(e)) => (Target::StreamName, e),
            Some(filter_options::Filter::EventType(e)) => (Target::EventType, e),
            None => return Err(Status::invalid_argument("the filter names no expression")),
        };
        let matcher = if !expression.prefix.is_empty() {
            if expression.prefix.len() > MAX_FILTER_PREFIXES {
                return Err(Status::invalid_argument(format!(
                    "the filter lists {} prefixes, the most allowed is {MAX_FILTER_PREFIXES}",
                    expression.prefix.len()
                )));
            }
            if expression
                .prefix
                .iter()
                .any(|p| p.len() > MAX_FILTER_EXPRESSION_BYTES)
            {
                return Err(Status::invalid_argument(format!(
                    "a filter prefix is longer than {MAX_FILTER_EXPRESSION_BYTES} bytes"
                )));
            }
            Matcher::Prefixes(expression.prefix.clone())
        } else if !expression.regex.is_empty() {
            if expression.regex.len() > MAX_FILTER_EXPRESSION_BYTES {
                return Err(Status::invalid_argument(format!(
                    "the filter expression is longer than {MAX_FILTER_EXPRESSION_BYTES} bytes"
                )));
            }
            let regex = RegexBuilder::new(&expression.regex)
                .size_limit(MAX_FILTER_REGEX_SIZE)
                .build()
                .map_err(|e| Status::invalid_argument(format!("filter expression: {e}")))?;
            Matcher::Regex(regex)
        } else {
            return Err(Status::invalid_argument(
                "the filter has neither prefixes nor a regular expression",
            ));
        };
        let window = match options.window {
            Some(filter_options::Window::Max(max)) if max > 0 => u64::from(max),
            _ => DEFAULT_CHECKPOINT_WINDOW,
        };
        let multiplier = u64::from(options.checkpoint_interval_multiplier.max(1));
        Ok(LogFilter {
            target,
            matcher,
            checkpoint_interval: window.saturating_mul(multiplier),
        })
    }

    /// Whether `event` passes.
    pub(crate) fn matches(&self, event: &RecordedEvent) -> bool {
        let subject = match self.target {
            Target::StreamName => event.stream_id.as_str(),
            Target::EventType => event.event_type.as_str(),
        };
        match &self.matcher {
            Matcher::Prefixes(prefixes) => prefixes.iter().any(|p| subject.starts_with(p.as_str())),
            Matcher::Regex(regex) => regex.is_match(subject),
        }
    }
}
