//! Typed hooks: events that modules observe (`run`, a handler may stop the event) and values
//! they transform (`fold`, each filter may change or drop the value), ordered by priority.
//!
//! Events are plain Rust types, so a handler can't subscribe to a misspelt event name and the
//! compiler checks what each handler receives (the two hook kinds are those of ejabberd's
//! `run`/`run_fold`; Prosody's string-named events are what this avoids).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

/// What a `run` handler tells the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Let handlers of lower priority see the event.
    Continue,
    /// The event is handled: stop here.
    Stop,
}

type Handler<E> = Arc<dyn Fn(&E) -> Flow + Send + Sync>;
type Filter<E> = Arc<dyn Fn(E) -> Option<E> + Send + Sync>;

struct Chain<T> {
    entries: Vec<(i32, T)>,
}

impl<T> Chain<T> {
    fn insert(&mut self, priority: i32, item: T) {
        // Higher priority first; equal priorities keep registration order.
        let pos = self
            .entries
            .iter()
            .position(|(p, _)| *p < priority)
            .unwrap_or(self.entries.len());
        self.entries.insert(pos, (priority, item));
    }
}

/// The hook table of one virtual host. Built while modules initialise, read-only afterwards.
#[derive(Default)]
pub struct Hooks {
    handlers: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
    filters: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl Hooks {
    pub fn add_handler<E: 'static>(
        &mut self,
        priority: i32,
        handler: impl Fn(&E) -> Flow + Send + Sync + 'static,
    ) {
        let chain = self.handlers.entry(TypeId::of::<E>()).or_insert_with(|| {
            Box::new(Chain::<Handler<E>> {
                entries: Vec::new(),
            })
        });
        if let Some(chain) = chain.downcast_mut::<Chain<Handler<E>>>() {
            chain.insert(priority, Arc::new(handler));
        }
    }

    pub fn add_filter<E: 'static>(
        &mut self,
        priority: i32,
        filter: impl Fn(E) -> Option<E> + Send + Sync + 'static,
    ) {
        let chain = self.filters.entry(TypeId::of::<E>()).or_insert_with(|| {
            Box::new(Chain::<Filter<E>> {
                entries: Vec::new(),
            })
        });
        if let Some(chain) = chain.downcast_mut::<Chain<Filter<E>>>() {
            chain.insert(priority, Arc::new(filter));
        }
    }

    /// Runs the handlers of `E` in priority order until one returns [`Flow::Stop`].
    pub fn run<E: 'static>(&self, event: &E) -> Flow {
        if let Some(chain) = self
            .handlers
            .get(&TypeId::of::<E>())
            .and_then(|c| c.downcast_ref::<Chain<Handler<E>>>())
        {
            for (_, h) in &chain.entries {
                if h(event) == Flow::Stop {
                    return Flow::Stop;
                }
            }
        }
        Flow::Continue
    }

    /// Threads `value` through the filters of `E`; `None` means a filter dropped it.
    pub fn fold<E: 'static>(&self, value: E) -> Option<E> {
        let Some(chain) = self
            .filters
            .get(&TypeId::of::<E>())
            .and_then(|c| c.downcast_ref::<Chain<Filter<E>>>())
        else {
            return Some(value);
        };
        let mut v = value;
        for (_, f) in &chain.entries {
            v = f(v)?;
        }
        Some(v)
    }

    pub fn has_handlers<E: 'static>(&self) -> bool {
        self.handlers.contains_key(&TypeId::of::<E>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    struct Ping(u32);

    #[test]
    fn handlers_run_by_priority_and_can_stop() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut hooks = Hooks::default();
        for (prio, name, flow) in [
            (0, "low", Flow::Continue),
            (10, "high", Flow::Continue),
            (5, "mid-stop", Flow::Stop),
        ] {
            let seen = seen.clone();
            hooks.add_handler::<Ping>(prio, move |p| {
                seen.lock().push((name, p.0));
                flow
            });
        }
        assert_eq!(hooks.run(&Ping(7)), Flow::Stop);
        assert_eq!(*seen.lock(), vec![("high", 7), ("mid-stop", 7)]);
        assert_eq!(hooks.run(&42u8), Flow::Continue, "no handlers: continue");
    }

    #[test]
    fn filters_fold_and_drop() {
        let mut hooks = Hooks::default();
        hooks.add_filter::<u32>(1, |v| Some(v + 1));
        hooks.add_filter::<u32>(2, |v| Some(v * 10));
        assert_eq!(hooks.fold(1u32), Some(11), "priority 2 runs first");
        hooks.add_filter::<u32>(0, |v| if v > 100 { None } else { Some(v) });
        assert_eq!(hooks.fold(20u32), None);
        assert_eq!(hooks.fold("untouched"), Some("untouched"));
    }
}
