//! Typed hooks: events that modules observe (`run`: a handler may stop the event) and values
//! they transform (`fold`: each filter may change or drop the value), ordered by priority.
//!
//! Events are plain Rust types, so a handler can't subscribe to a misspelt event name and the
//! compiler checks what each handler receives (the two hook kinds are those of ejabberd's
//! `run`/`run_fold`; Prosody's string-named events are what this avoids). Handlers are async
//! because most need storage; they run in the task that emitted the event, in order, so a
//! client's stanzas keep their order through every hook.
//!
//! `C` is the context handed to every handler (the server, in the running system), so this
//! table can be tested without one.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a `run` handler tells the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Let handlers of lower priority see the event.
    Continue,
    /// The event is handled: stop here.
    Stop,
}

type Handler<C, E> = Arc<dyn Fn(C, Arc<E>) -> BoxFuture<Flow> + Send + Sync>;
type Filter<C, E> = Arc<dyn Fn(C, E) -> BoxFuture<Option<E>> + Send + Sync>;

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
pub struct Hooks<C> {
    handlers: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
    filters: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
    _ctx: std::marker::PhantomData<fn(C)>,
}

impl<C> Default for Hooks<C> {
    fn default() -> Self {
        Self {
            handlers: HashMap::new(),
            filters: HashMap::new(),
            _ctx: std::marker::PhantomData,
        }
    }
}

impl<C: Clone + Send + 'static> Hooks<C> {
    pub fn add_handler<E, F, Fut>(&mut self, priority: i32, handler: F)
    where
        E: Send + Sync + 'static,
        F: Fn(C, Arc<E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Flow> + Send + 'static,
    {
        let h: Handler<C, E> = Arc::new(move |c, e| Box::pin(handler(c, e)));
        let chain = self.handlers.entry(TypeId::of::<E>()).or_insert_with(|| {
            Box::new(Chain::<Handler<C, E>> {
                entries: Vec::new(),
            })
        });
        if let Some(chain) = chain.downcast_mut::<Chain<Handler<C, E>>>() {
            chain.insert(priority, h);
        }
    }

    pub fn add_filter<E, F, Fut>(&mut self, priority: i32, filter: F)
    where
        E: Send + 'static,
        F: Fn(C, E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<E>> + Send + 'static,
    {
        let f: Filter<C, E> = Arc::new(move |c, e| Box::pin(filter(c, e)));
        let chain = self.filters.entry(TypeId::of::<E>()).or_insert_with(|| {
            Box::new(Chain::<Filter<C, E>> {
                entries: Vec::new(),
            })
        });
        if let Some(chain) = chain.downcast_mut::<Chain<Filter<C, E>>>() {
            chain.insert(priority, f);
        }
    }

    /// Runs the handlers of `E` in priority order until one returns [`Flow::Stop`].
    pub async fn run<E: Send + Sync + 'static>(&self, ctx: &C, event: E) -> Flow {
        self.run_shared(ctx, Arc::new(event)).await
    }

    /// [`run`](Self::run) for an event the caller keeps using afterwards.
    pub async fn run_shared<E: Send + Sync + 'static>(&self, ctx: &C, event: Arc<E>) -> Flow {
        let Some(chain) = self
            .handlers
            .get(&TypeId::of::<E>())
            .and_then(|c| c.downcast_ref::<Chain<Handler<C, E>>>())
        else {
            return Flow::Continue;
        };
        for (_, h) in &chain.entries {
            if h(ctx.clone(), event.clone()).await == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Threads `value` through the filters of `E`; `None` means a filter dropped it.
    pub async fn fold<E: Send + 'static>(&self, ctx: &C, value: E) -> Option<E> {
        let Some(chain) = self
            .filters
            .get(&TypeId::of::<E>())
            .and_then(|c| c.downcast_ref::<Chain<Filter<C, E>>>())
        else {
            return Some(value);
        };
        let mut v = value;
        for (_, f) in &chain.entries {
            v = f(ctx.clone(), v).await?;
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

    #[tokio::test]
    async fn handlers_run_by_priority_and_can_stop() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut hooks = Hooks::<()>::default();
        for (prio, name, flow) in [
            (0, "low", Flow::Continue),
            (10, "high", Flow::Continue),
            (5, "mid-stop", Flow::Stop),
        ] {
            let seen = seen.clone();
            hooks.add_handler::<Ping, _, _>(prio, move |(), p| {
                seen.lock().push((name, p.0));
                async move { flow }
            });
        }
        assert_eq!(hooks.run(&(), Ping(7)).await, Flow::Stop);
        assert_eq!(*seen.lock(), vec![("high", 7), ("mid-stop", 7)]);
        assert_eq!(
            hooks.run(&(), 42u8).await,
            Flow::Continue,
            "no handlers: continue"
        );
    }

    #[tokio::test]
    async fn filters_fold_and_drop() {
        let mut hooks = Hooks::<u32>::default();
        hooks.add_filter::<u32, _, _>(1, |_, v| async move { Some(v + 1) });
        hooks.add_filter::<u32, _, _>(2, |ctx, v| async move { Some(v * ctx) });
        assert_eq!(
            hooks.fold(&10, 1u32).await,
            Some(11),
            "priority 2 runs first"
        );
        hooks.add_filter::<u32, _, _>(0, |_, v| async move { (v <= 100).then_some(v) });
        assert_eq!(hooks.fold(&10, 20u32).await, None);
        assert_eq!(hooks.fold(&10, "untouched").await, Some("untouched"));
    }
}
