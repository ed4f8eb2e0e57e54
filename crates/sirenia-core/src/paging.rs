//! Paged reads with read-ahead.
//!
//! A read keeps up to [`READ_AHEAD_PAGES`] page fetches in flight while the consumer drains the
//! current page, so fetching (a blocking SQLite decode, a network round trip) overlaps consuming.
//! Where the next page's start is known before the current page arrives — a stream's revisions
//! are contiguous, so after a full page of `n` starting at `r` comes `r + n` — pages are fetched
//! concurrently. Every page records the cursor it was requested at and the page before it says
//! where the next must start; a guess that turns out wrong is discarded and fetched again, so
//! speculation never skips or repeats an event. Memory stays bounded by a few pages.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::FuturesOrdered;
use futures_util::{Stream, StreamExt};

use crate::error::StoreError;
use crate::event::RecordedEvent;
use crate::limits::READ_AHEAD_PAGES;

/// A fetched page and where it leads.
pub(crate) struct Fetched<C> {
    /// The cursor the page was requested at.
    pub(crate) at: C,
    /// How many events were asked for.
    pub(crate) want: usize,
    pub(crate) events: Vec<RecordedEvent>,
    /// Where the following page starts; `None` at the end.
    pub(crate) next: Option<C>,
}

pub(crate) type PageFuture<C> =
    Pin<Box<dyn Future<Output = Result<Fetched<C>, StoreError>> + Send>>;

/// What a paged read fetches from.
pub(crate) trait PageSource: Send + Unpin + 'static {
    type Cursor: Copy + Eq + Send + Unpin + 'static;
    /// Fetches at most `want` events from `at`.
    fn fetch(&self, at: Self::Cursor, want: usize) -> PageFuture<Self::Cursor>;
    /// Where the page after a full page of `want` from `at` starts, if known in advance.
    fn speculate(&self, at: Self::Cursor, want: usize) -> Option<Self::Cursor>;
}

pub(crate) struct Paged<P: PageSource> {
    source: P,
    page_size: usize,
    /// Events the caller still wants (`None`: all).
    remaining: Option<u64>,
    /// Cursor of the next fetch to issue, if one may be issued.
    next_request: Option<P::Cursor>,
    /// Cursor the next page in order must have been requested at (`None`: not known yet).
    expected: Option<P::Cursor>,
    in_flight: FuturesOrdered<PageFuture<P::Cursor>>,
    /// Events requested by fetches in flight (for the limit).
    in_flight_events: usize,
    ready: VecDeque<Fetched<P::Cursor>>,
    buffer: std::vec::IntoIter<RecordedEvent>,
    /// No page will follow the ones already received.
    at_end: bool,
    /// Whether a page has come back (speculation starts then).
    accepted: bool,
    /// A fetch failed: reported once the events fetched before it are delivered.
    error: Option<StoreError>,
    failed: bool,
}

impl<P: PageSource> Paged<P> {
    pub(crate) fn new(source: P, start: P::Cursor, page_size: usize, limit: Option<u64>) -> Self {
        Paged {
            source,
            page_size,
            remaining: limit,
            next_request: Some(start),
            expected: Some(start),
            in_flight: FuturesOrdered::new(),
            in_flight_events: 0,
            ready: VecDeque::new(),
            buffer: Vec::new().into_iter(),
            at_end: false,
            accepted: false,
            error: None,
            failed: false,
        }
    }

    fn outstanding(&self) -> u64 {
        let ready: usize = self.ready.iter().map(|p| p.events.len()).sum();
        (self.buffer.len() + ready + self.in_flight_events) as u64
    }

    /// Issues fetches until [`READ_AHEAD_PAGES`] are in flight or ready.
    fn fill(&mut self) {
        while !self.at_end && self.in_flight.len() + self.ready.len() < READ_AHEAD_PAGES {
            let Some(at) = self.next_request else { return };
            let want = match self.remaining {
                Some(r) => {
                    let left = r.saturating_sub(self.outstanding());
                    usize::try_from(left).map_or(self.page_size, |l| l.min(self.page_size))
                }
                None => self.page_size,
            };
            if want == 0 {
                return;
            }
            self.in_flight.push_back(self.source.fetch(at, want));
            self.in_flight_events += want;
            // Fetch ahead only once a page came back: most reads (an aggregate's stream) fit
            // in their first page, and a speculative fetch past their end is a wasted query.
            self.next_request = if self.accepted {
                self.source.speculate(at, want)
            } else {
                None
            };
        }
    }

    /// Takes a completed page in order, checking it is the one that comes next.
    fn accept(&mut self, page: Fetched<P::Cursor>) {
        self.in_flight_events = self.in_flight_events.saturating_sub(page.want);
        if self.expected != Some(page.at) {
            // A speculative fetch started at the wrong place: drop it and everything after it,
            // and fetch from where the previous page said.
            self.in_flight = FuturesOrdered::new();
            self.in_flight_events = 0;
            self.next_request = self.expected;
            return;
        }
        self.expected = page.next;
        self.accepted = true;
        match page.next {
            None => {
                self.at_end = true;
                self.next_request = None;
                self.in_flight = FuturesOrdered::new();
                self.in_flight_events = 0;
            }
            Some(next) if self.in_flight.is_empty() => self.next_request = Some(next),
            Some(_) => {}
        }
        self.ready.push_back(page);
    }
}

impl<P: PageSource> Stream for Paged<P> {
    type Item = Result<RecordedEvent, StoreError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.failed || this.remaining == Some(0) {
                return Poll::Ready(None);
            }
            this.fill();
            // Drive the fetches even while events are buffered, so they progress meanwhile.
            while !this.in_flight.is_empty() {
                match this.in_flight.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(page))) => {
                        this.accept(page);
                        this.fill();
                    }
                    Poll::Ready(Some(Err(e))) => {
                        // Nothing after the failed page is delivered; what came before is.
                        this.error = Some(e);
                        this.at_end = true;
                        this.next_request = None;
                        this.in_flight = FuturesOrdered::new();
                        this.in_flight_events = 0;
                        break;
                    }
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            if let Some(event) = this.buffer.next() {
                this.remaining = this.remaining.map(|r| r - 1);
                return Poll::Ready(Some(Ok(event)));
            }
            if let Some(page) = this.ready.pop_front() {
                this.buffer = page.events.into_iter();
                continue;
            }
            if let Some(e) = this.error.take() {
                this.failed = true;
                return Poll::Ready(Some(Err(e)));
            }
            if this.in_flight.is_empty() && (this.at_end || this.next_request.is_none()) {
                return Poll::Ready(None);
            }
            if this.in_flight.is_empty() {
                // A fetch can be issued: loop to issue it.
                continue;
            }
            return Poll::Pending;
        }
    }
}

/// The pages of one stream. Revisions are contiguous, so the page after a full one is known.
pub(crate) struct StreamSource<S> {
    pub(crate) store: std::sync::Arc<S>,
    pub(crate) stream: crate::id::StreamId,
    pub(crate) direction: crate::store::Direction,
}

impl<S: crate::store::EventStore> PageSource for StreamSource<S> {
    type Cursor = u64;

    fn fetch(&self, at: u64, want: usize) -> PageFuture<u64> {
        let (store, stream, direction) = (self.store.clone(), self.stream.clone(), self.direction);
        Box::pin(async move {
            let events = store.read_stream_page(&stream, at, direction, want).await?;
            let next = match (events.last(), direction) {
                (Some(_), _) if events.len() < want => None,
                (None, _) => None,
                (Some(last), crate::store::Direction::Forward) => last.revision.checked_add(1),
                (Some(last), crate::store::Direction::Backward) => last.revision.checked_sub(1),
            };
            Ok(Fetched {
                at,
                want,
                events,
                next,
            })
        })
    }

    fn speculate(&self, at: u64, want: usize) -> Option<u64> {
        match self.direction {
            crate::store::Direction::Forward => at.checked_add(want as u64),
            // From "the end" the first page's revisions are not known in advance.
            crate::store::Direction::Backward if at == u64::MAX => None,
            crate::store::Direction::Backward => at.checked_sub(want as u64),
        }
    }
}

/// The pages of the global log. Where a page ends depends on the store (holes, filters), so
/// the next page is fetched as soon as the current one arrives, not before, unless the store's
/// positions are dense and the read unfiltered: then a full page of `n` from `p` ends at
/// `p + n - 1`.
pub(crate) struct AllSource<S> {
    pub(crate) dense: bool,
    pub(crate) store: std::sync::Arc<S>,
    pub(crate) direction: crate::store::Direction,
    pub(crate) filter: std::sync::Arc<crate::store::EventFilter>,
}

impl<S: crate::store::EventStore> PageSource for AllSource<S> {
    type Cursor = crate::id::Position;

    fn fetch(&self, at: crate::id::Position, want: usize) -> PageFuture<crate::id::Position> {
        let (store, direction, filter) = (self.store.clone(), self.direction, self.filter.clone());
        Box::pin(async move {
            let page = store.read_all_page(at, direction, &filter, want).await?;
            let next = (!page.at_end).then_some(page.next);
            Ok(Fetched {
                at,
                want,
                events: page.events,
                next,
            })
        })
    }

    fn speculate(&self, at: crate::id::Position, want: usize) -> Option<crate::id::Position> {
        if !self.dense {
            return None;
        }
        let want = want as u64;
        match self.direction {
            // Position 0 is before every event: a read from it starts at 1.
            crate::store::Direction::Forward => {
                at.get().max(1).checked_add(want).map(crate::id::Position)
            }
            crate::store::Direction::Backward if at == crate::id::Position::END => None,
            crate::store::Direction::Backward => {
                at.get().checked_sub(want).map(crate::id::Position)
            }
        }
    }
}
