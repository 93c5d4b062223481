//! Typed hooks: events that modules observe (`run`: a handler may stop the event) and values
//! they transform (`fold`: each filter may change or drop the value), in a declared order.
//!
//! Events are plain Rust types, so a handler can't subscribe to a misspelt event name and the
//! compiler checks what each handler receives (the two hook kinds are those of ejabberd's
//! `run`/`run_fold`; Prosody's string-named events are what this avoids). Handlers are async
//! because most need storage; they run in the task that emitted the event, in order, so a
//! client's stanzas keep their order through every hook.
//!
//! Order is declared, not numbered: each handler names its [`Phase`] and which modules' handlers
//! of the same event it must run before or after ([`Order`]). [`Hooks::resolve`] sorts every
//! chain once at start and refuses contradictions (a cycle, a constraint against the phases) or
//! a constraint naming a module that does not exist; handlers left free keep the order in which
//! their modules were initialised.
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
    /// Let the handlers after this one see the event.
    Continue,
    /// The event is handled: stop here.
    Stop,
}

/// The coarse place of a handler in its event's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Phase {
    /// Before any handler of the other phases: guards that must see the value as it came in
    /// (refusing a forged stanza before any module acts on it).
    First,
    /// Where most handlers run.
    #[default]
    Normal,
    /// After every other handler: sees only what all of them let through.
    Last,
}

/// Where a handler runs: its phase, and modules whose handlers of the same event (in the same
/// phase) it must run before or after. A constraint naming a module not enabled on the host,
/// or one with no handler for the event, constrains nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Order {
    phase: Phase,
    before: Vec<&'static str>,
    after: Vec<&'static str>,
}

impl Order {
    /// In [`Phase::First`].
    pub fn first() -> Self {
        Self::in_phase(Phase::First)
    }
    /// In [`Phase::Normal`], unconstrained: the order in which modules were initialised.
    pub fn normal() -> Self {
        Self::in_phase(Phase::Normal)
    }
    /// In [`Phase::Last`].
    pub fn last() -> Self {
        Self::in_phase(Phase::Last)
    }
    pub fn in_phase(phase: Phase) -> Self {
        Self {
            phase,
            ..Self::default()
        }
    }
    /// Runs before every handler `module` registered for the same event.
    pub fn before(mut self, module: &'static str) -> Self {
        self.before.push(module);
        self
    }
    /// Runs after every handler `module` registered for the same event.
    pub fn after(mut self, module: &'static str) -> Self {
        self.after.push(module);
        self
    }
    pub fn phase(&self) -> Phase {
        self.phase
    }
}

/// Why a chain's declared order cannot be satisfied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hooks of {event}: {message}")]
pub struct OrderError {
    /// The event's Rust type.
    pub event: &'static str,
    pub message: String,
}

type Handler<C, E> = Arc<dyn Fn(C, Arc<E>) -> BoxFuture<Flow> + Send + Sync>;
type Filter<C, E> = Arc<dyn Fn(C, E) -> BoxFuture<Option<E>> + Send + Sync>;

struct Entry<T> {
    /// The module that registered it.
    module: &'static str,
    order: Order,
    item: T,
}

struct Chain<T> {
    event: &'static str,
    entries: Vec<Entry<T>>,
}

/// What [`Hooks::resolve`] needs of a chain, whatever its event type.
trait AnyChain: Send + Sync {
    fn resolve(&mut self, is_module: &dyn Fn(&str) -> bool) -> Result<(), OrderError>;
    fn modules(&self) -> Vec<&'static str>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Send + Sync + 'static> AnyChain for Chain<T> {
    fn resolve(&mut self, is_module: &dyn Fn(&str) -> bool) -> Result<(), OrderError> {
        let error = |message: String| OrderError {
            event: self.event,
            message,
        };
        let n = self.entries.len();
        // must_precede[a] holds every b that a must run before.
        let mut must_precede: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (a, e) in self.entries.iter().enumerate() {
            let constraints = e
                .order
                .before
                .iter()
                .map(|m| (m, true))
                .chain(e.order.after.iter().map(|m| (m, false)));
            for (&other, a_first) in constraints {
                if !is_module(other) {
                    return Err(error(format!(
                        "module '{}' orders itself against '{other}', which is no module",
                        e.module
                    )));
                }
                for (b, o) in self.entries.iter().enumerate() {
                    if o.module != other || a == b {
                        continue;
                    }
                    let (x, y) = if a_first { (a, b) } else { (b, a) };
                    let (px, py) = (self.entries[x].order.phase, self.entries[y].order.phase);
                    if px > py {
                        return Err(error(format!(
                            "'{}' must run before '{}', but its phase {px:?} comes after {py:?}",
                            self.entries[x].module, self.entries[y].module
                        )));
                    }
                    if px == py {
                        must_precede[x].push(y);
                    }
                }
            }
        }
        // Kahn's algorithm, phase by phase; among the handlers free to run next, the one
        // registered first, so unconstrained handlers keep the modules' initialisation order.
        let mut waiting_on: Vec<usize> = vec![0; n];
        for targets in &must_precede {
            for &y in targets {
                waiting_on[y] += 1;
            }
        }
        let mut sorted = Vec::with_capacity(n);
        for phase in [Phase::First, Phase::Normal, Phase::Last] {
            let mut left: Vec<usize> = (0..n)
                .filter(|&i| self.entries[i].order.phase == phase)
                .collect();
            while !left.is_empty() {
                let Some(pos) = left.iter().position(|&i| waiting_on[i] == 0) else {
                    let names: Vec<&str> = left.iter().map(|&i| self.entries[i].module).collect();
                    return Err(error(format!(
                        "the before/after constraints of {} form a cycle",
                        names.join(", ")
                    )));
                };
                let next = left.remove(pos);
                for &y in &must_precede[next] {
                    waiting_on[y] -= 1;
                }
                sorted.push(next);
            }
        }
        let mut slots: Vec<Option<Entry<T>>> = self.entries.drain(..).map(Some).collect();
        self.entries = sorted.into_iter().filter_map(|i| slots[i].take()).collect();
        Ok(())
    }

    fn modules(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.module).collect()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The hook table of one virtual host. Built while modules initialise, sorted once by
/// [`Hooks::resolve`], read-only afterwards.
pub struct Hooks<C> {
    handlers: HashMap<TypeId, Box<dyn AnyChain>>,
    filters: HashMap<TypeId, Box<dyn AnyChain>>,
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

fn push<T: Send + Sync + 'static>(
    table: &mut HashMap<TypeId, Box<dyn AnyChain>>,
    key: TypeId,
    event: &'static str,
    entry: Entry<T>,
) {
    let chain = table.entry(key).or_insert_with(|| {
        Box::new(Chain::<T> {
            event,
            entries: Vec::new(),
        })
    });
    if let Some(chain) = chain.as_any_mut().downcast_mut::<Chain<T>>() {
        chain.entries.push(entry);
    }
}

impl<C: Clone + Send + 'static> Hooks<C> {
    /// Adds a handler of `E` for `module`, placed as `order` says once [`resolve`](Self::resolve)d.
    pub fn add_handler<E, F, Fut>(&mut self, module: &'static str, order: Order, handler: F)
    where
        E: Send + Sync + 'static,
        F: Fn(C, Arc<E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Flow> + Send + 'static,
    {
        let item: Handler<C, E> = Arc::new(move |c, e| Box::pin(handler(c, e)));
        let entry = Entry {
            module,
            order,
            item,
        };
        push(
            &mut self.handlers,
            TypeId::of::<E>(),
            std::any::type_name::<E>(),
            entry,
        );
    }

    /// Adds a filter of `E` for `module`, placed as `order` says once [`resolve`](Self::resolve)d.
    pub fn add_filter<E, F, Fut>(&mut self, module: &'static str, order: Order, filter: F)
    where
        E: Send + 'static,
        F: Fn(C, E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<E>> + Send + 'static,
    {
        let item: Filter<C, E> = Arc::new(move |c, e| Box::pin(filter(c, e)));
        let entry = Entry {
            module,
            order,
            item,
        };
        push(
            &mut self.filters,
            TypeId::of::<E>(),
            std::any::type_name::<E>(),
            entry,
        );
    }

    /// Sorts every chain by its declared order; `is_module` tells which names a constraint
    /// may use (every module the build has, enabled here or not).
    pub fn resolve(&mut self, is_module: &dyn Fn(&str) -> bool) -> Result<(), OrderError> {
        for chain in self.handlers.values_mut().chain(self.filters.values_mut()) {
            chain.resolve(is_module)?;
        }
        Ok(())
    }

    /// The modules whose handlers of `E` run, in the order they run.
    pub fn handler_order<E: 'static>(&self) -> Vec<&'static str> {
        self.handlers
            .get(&TypeId::of::<E>())
            .map(|c| c.modules())
            .unwrap_or_default()
    }

    /// The modules whose filters of `E` run, in the order they run.
    pub fn filter_order<E: 'static>(&self) -> Vec<&'static str> {
        self.filters
            .get(&TypeId::of::<E>())
            .map(|c| c.modules())
            .unwrap_or_default()
    }

    /// Runs the handlers of `E` in order until one returns [`Flow::Stop`].
    pub async fn run<E: Send + Sync + 'static>(&self, ctx: &C, event: E) -> Flow {
        self.run_shared(ctx, Arc::new(event)).await
    }

    /// [`run`](Self::run) for an event the caller keeps using afterwards.
    pub async fn run_shared<E: Send + Sync + 'static>(&self, ctx: &C, event: Arc<E>) -> Flow {
        let Some(chain) = self
            .handlers
            .get(&TypeId::of::<E>())
            .and_then(|c| c.as_any().downcast_ref::<Chain<Handler<C, E>>>())
        else {
            return Flow::Continue;
        };
        for e in &chain.entries {
            if (e.item)(ctx.clone(), event.clone()).await == Flow::Stop {
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
            .and_then(|c| c.as_any().downcast_ref::<Chain<Filter<C, E>>>())
        else {
            return Some(value);
        };
        let mut v = value;
        for e in &chain.entries {
            v = (e.item)(ctx.clone(), v).await?;
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

    fn any_module(_: &str) -> bool {
        true
    }

    #[tokio::test]
    async fn handlers_run_in_declared_order_and_can_stop() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut hooks = Hooks::<()>::default();
        for (module, order, flow) in [
            ("low", Order::last(), Flow::Continue),
            ("mid-stop", Order::normal(), Flow::Stop),
            ("high", Order::normal().before("mid-stop"), Flow::Continue),
        ] {
            let seen = seen.clone();
            hooks.add_handler::<Ping, _, _>(module, order, move |(), p| {
                seen.lock().push((module, p.0));
                async move { flow }
            });
        }
        hooks.resolve(&any_module).expect("consistent");
        assert_eq!(hooks.handler_order::<Ping>(), ["high", "mid-stop", "low"]);
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
        hooks.add_filter::<u32, _, _>("add", Order::normal(), |_, v| async move { Some(v + 1) });
        hooks.add_filter::<u32, _, _>("mul", Order::normal().before("add"), |ctx, v| async move {
            Some(v * ctx)
        });
        hooks.resolve(&any_module).expect("consistent");
        assert_eq!(hooks.fold(&10, 1u32).await, Some(11), "mul runs first");
        hooks.add_filter::<u32, _, _>("cap", Order::last(), |_, v| async move {
            (v <= 100).then_some(v)
        });
        hooks.resolve(&any_module).expect("consistent");
        assert_eq!(hooks.fold(&10, 20u32).await, None);
        assert_eq!(hooks.fold(&10, "untouched").await, Some("untouched"));
    }

    #[test]
    fn unconstrained_handlers_keep_registration_order() {
        let mut hooks = Hooks::<()>::default();
        for m in ["c", "a", "b"] {
            hooks.add_handler::<Ping, _, _>(m, Order::normal(), |(), _| async { Flow::Continue });
        }
        hooks.add_handler::<Ping, _, _>("z", Order::first(), |(), _| async { Flow::Continue });
        hooks.add_handler::<Ping, _, _>(
            "y",
            Order::normal().after("b").before("ghost"),
            |(), _| async { Flow::Continue },
        );
        hooks.resolve(&any_module).expect("consistent");
        assert_eq!(hooks.handler_order::<Ping>(), ["z", "c", "a", "b", "y"]);
    }

    #[test]
    fn contradictions_are_refused_at_start() {
        let noop = |(): (), _: Arc<Ping>| async { Flow::Continue };
        let mut cycle = Hooks::<()>::default();
        cycle.add_handler::<Ping, _, _>("a", Order::normal().after("b"), noop);
        cycle.add_handler::<Ping, _, _>("b", Order::normal().after("a"), noop);
        let e = cycle.resolve(&any_module).expect_err("cycle");
        assert!(e.to_string().contains("cycle"), "{e}");

        let mut phases = Hooks::<()>::default();
        phases.add_handler::<Ping, _, _>("a", Order::first().after("b"), noop);
        phases.add_handler::<Ping, _, _>("b", Order::normal(), noop);
        let e = phases.resolve(&any_module).expect_err("against the phases");
        assert!(e.to_string().contains("phase"), "{e}");

        let mut typo = Hooks::<()>::default();
        typo.add_handler::<Ping, _, _>("a", Order::normal().after("blockng"), noop);
        let e = typo
            .resolve(&|m| m != "blockng")
            .expect_err("unknown module");
        assert!(e.to_string().contains("blockng"), "{e}");
    }
}
