//! The dataflow against the naive reference: at every epoch, the changed series and the full
//! feature table must equal what the reference computes from scratch, with 1 and 3 workers.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use dataflows::emit::{Collapsed, Emission};
use dataflows::{Epoch, FeatureSpec, FeatureVec, Key, PeriodKind};
use stockcast::pipeline::dataflow;

#[path = "support/stepping.rs"]
mod stepping;

fn check(seed: u64, period: PeriodKind, spec: &FeatureSpec, lateness: i64, workers: usize) {
    let clock = common::clock_for(period);
    let events = common::random_events(seed, period, 300);
    let plan = stepping::plan(&clock, lateness, &events, None);
    let mut assigned = vec![0 as Epoch; events.len()];
    for step in &plan.steps {
        for &i in &step.events {
            assigned[i as usize] = step.epoch;
        }
    }
    let mut outputs = Vec::new();
    stepping::run(
        clock,
        spec,
        workers,
        Arc::new(events.clone()),
        Arc::new(plan.clone()),
        |out| outputs.push(out),
    )
    .unwrap();
    assert_eq!(
        outputs.len(),
        plan.steps.len(),
        "every step closes an epoch"
    );

    let mut table: BTreeMap<Key, FeatureVec> = BTreeMap::new();
    let mut previous: BTreeMap<Key, FeatureVec> = BTreeMap::new();
    let mut rejected_total = Vec::new();
    let mut changed_total = 0;
    for out in &outputs {
        let (expected, too_late) = common::reference(&clock, spec, &events, &assigned, out.epoch);
        let expected_changes: Vec<(Key, FeatureVec)> = expected
            .iter()
            .filter(|(k, v)| previous.get(*k) != Some(*v))
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        assert_eq!(
            out.changed, expected_changes,
            "seed {seed} {period:?} workers {workers}: changed series at epoch {}",
            out.epoch
        );
        table.extend(out.changed.iter().cloned());
        assert_eq!(table, expected, "seed {seed}: table at epoch {}", out.epoch);
        rejected_total.extend(out.rejected.iter().map(|(i, why)| {
            assert_eq!(why.reason(), "too_late");
            *i
        }));
        rejected_total.sort_unstable();
        assert_eq!(rejected_total, too_late, "seed {seed}: too-late events");
        changed_total += out.changed.len();
        previous = expected;
    }
    assert!(changed_total > 0, "seed {seed}: the test exercised nothing");
}

#[test]
fn daily_features_match_the_reference() {
    let spec = common::small_spec(PeriodKind::Day);
    for seed in 0..12 {
        for workers in [1, 3] {
            check(
                seed,
                PeriodKind::Day,
                &spec,
                if seed % 3 == 0 { 7200 } else { 0 },
                workers,
            );
        }
    }
}

#[test]
fn weekly_features_match_the_reference() {
    let spec = common::small_spec(PeriodKind::Week);
    for seed in 100..108 {
        for workers in [1, 3] {
            check(seed, PeriodKind::Week, &spec, 0, workers);
        }
    }
}

#[test]
fn default_specs_match_the_reference() {
    check(7, PeriodKind::Day, &FeatureSpec::daily(), 0, 2);
    check(8, PeriodKind::Week, &FeatureSpec::weekly(), 0, 2);
}

#[test]
fn the_stream_has_late_and_too_late_events() {
    // Guards the generator: the comparisons above must see lateness of both kinds.
    let clock = common::clock_for(PeriodKind::Day);
    let spec = common::small_spec(PeriodKind::Day);
    let (mut late, mut too_late) = (0, 0);
    for seed in 0..12 {
        let events = common::random_events(seed, PeriodKind::Day, 300);
        let plan = stepping::plan(&clock, 0, &events, None);
        late += plan.late.len();
        let mut assigned = vec![0; events.len()];
        for s in &plan.steps {
            for &i in &s.events {
                assigned[i as usize] = s.epoch;
            }
        }
        let last = plan.steps.last().unwrap().epoch;
        too_late += common::reference(&clock, &spec, &events, &assigned, last)
            .1
            .len();
    }
    assert!(
        late > 50 && too_late > 5,
        "late {late}, too late {too_late}"
    );
}

/// Changed series per epoch, in key order.
type ByEpoch = BTreeMap<Epoch, Vec<(Key, FeatureVec)>>;

/// The changes per epoch of stepping `plan` epoch by epoch, on one worker.
fn stepped(
    clock: dataflows::Clock,
    spec: &FeatureSpec,
    events: &[dataflows::Event],
    plan: &stepping::Plan,
) -> ByEpoch {
    let mut stepped = BTreeMap::new();
    stepping::run(
        clock,
        spec,
        1,
        Arc::new(events.to_vec()),
        Arc::new(plan.clone()),
        |out| {
            if !out.changed.is_empty() {
                stepped.insert(out.epoch, out.changed);
            }
        },
    )
    .unwrap();
    stepped
}

/// Runs `plan` on one worker in chunks of `chunk` steps, each fed in before the dataflow runs
/// at all, emitting as `emission` says: the changes per epoch, what the dataflow left out, and
/// the first epoch of each chunk.
fn batched(
    clock: dataflows::Clock,
    spec: &FeatureSpec,
    events: Vec<dataflows::Event>,
    plan: stepping::Plan,
    chunk: usize,
    emission: Emission,
) -> (ByEpoch, Collapsed, Vec<Epoch>) {
    let spec = spec.clone();
    timely::execute_directly(move |worker| {
        let mut input = dataflows::input::FeatureInput::new(clock, &spec);
        let (probe, sink, view) = dataflow::build(worker, &mut input, &spec, emission);
        let mut starts = Vec::new();
        for chunk in plan.steps.chunks(chunk) {
            starts.push(chunk[0].epoch);
            for step in chunk {
                input.advance_to(step.epoch);
                for &i in &step.events {
                    let _ = input.apply(&events[i as usize]);
                }
            }
            input.flush();
            let next = chunk.last().map_or(0, |s| s.epoch + 1);
            input.advance_to(next);
            input.flush();
            worker.step_while(|| probe.less_than(&next));
        }
        input.close();
        while !probe.done() {
            worker.step();
        }
        (by_epoch(&sink), view.take_collapsed(None), starts)
    })
}

/// The small daily spec, a random stream of events, its plan, and the changes of stepping it.
fn daily_run() -> (
    FeatureSpec,
    dataflows::Clock,
    Vec<dataflows::Event>,
    stepping::Plan,
    ByEpoch,
) {
    let spec = common::small_spec(PeriodKind::Day);
    let clock = common::clock_for(PeriodKind::Day);
    let events = common::random_events(7, PeriodKind::Day, 300);
    let plan = stepping::plan(&clock, 0, &events, None);
    let stepped = stepped(clock, &spec, &events, &plan);
    (spec, clock, events, plan, stepped)
}

/// The streaming worker advances its input through many epochs before the dataflow runs, so
/// one message can carry updates of several times. The changes per epoch must still be those of
/// stepping epoch by epoch.
#[test]
fn feeding_many_epochs_before_stepping_changes_nothing_per_epoch() {
    let (spec, clock, events, plan, stepped) = daily_run();
    let (batched, collapsed, _) = batched(clock, &spec, events, plan, 20, Emission::EveryEpoch);
    assert!(collapsed.is_empty());
    assert_eq!(batched.len(), stepped.len());
    for (epoch, changes) in &stepped {
        assert_eq!(
            batched.get(epoch),
            Some(changes),
            "changes at epoch {epoch}"
        );
    }
}

/// With `Emission::LastOfBatch` (the worker's `catch_up = "latest"`), each batch of epochs emits
/// a series once, its last change in the batch; every change before it in the batch is counted
/// at its epoch instead, and each batch's span covers them.
#[test]
fn the_last_of_a_batch_is_the_last_change_and_the_others_are_counted() {
    let (spec, clock, events, plan, stepped) = daily_run();
    let (last, collapsed, starts) = batched(clock, &spec, events, plan, 20, Emission::LastOfBatch);
    let batch_of = |epoch: Epoch| starts.partition_point(|s| *s <= epoch);
    // Per batch and series, its changes when stepping epoch by epoch, in epoch order.
    let mut per_batch: BTreeMap<(usize, Key), Vec<(Epoch, FeatureVec)>> = BTreeMap::new();
    for (epoch, changes) in &stepped {
        for (key, vec) in changes {
            let runs = per_batch.entry((batch_of(*epoch), *key)).or_default();
            runs.push((*epoch, vec.clone()));
        }
    }
    let mut want = ByEpoch::new();
    let mut superseded: BTreeMap<Epoch, u64> = BTreeMap::new();
    for ((_, key), mut changes) in per_batch {
        let (epoch, vec) = changes.pop().expect("a change");
        want.entry(epoch).or_default().push((key, vec));
        for (epoch, _) in changes {
            *superseded.entry(epoch).or_default() += 1;
        }
    }
    assert!(
        superseded.values().sum::<u64>() > 100,
        "the batches should hold several changes of a series: {superseded:?}"
    );
    assert_eq!(last, want);
    assert_eq!(collapsed.superseded, superseded);
    for epoch in superseded.keys() {
        assert!(
            (collapsed.spans.iter()).any(|(first, end)| first <= epoch && epoch < end),
            "epoch {epoch} outside every span {:?}",
            collapsed.spans
        );
    }
}

/// One record of a series' exported state.
type SeriesRecord = (Key, dataflows::model::Rec, dataflows::model::Agg);

/// Runs `plan` through a fresh dataflow from step `from` on, collecting the changes per epoch;
/// with `restore`, the dataflow first gets that checkpoint state at the epoch before.
fn continue_from(
    worker: &mut timely::worker::Worker,
    clock: dataflows::Clock,
    spec: &FeatureSpec,
    events: &[dataflows::Event],
    plan: &stepping::Plan,
    from: usize,
    restore: Option<(&dataflows::input::Reference, &[SeriesRecord])>,
) -> BTreeMap<Epoch, Vec<(Key, FeatureVec)>> {
    let mut input = dataflows::input::FeatureInput::new(clock, spec);
    let (probe, sink, view) = dataflow::build(worker, &mut input, spec, Emission::EveryEpoch);
    let first = plan.steps[from].epoch;
    if let Some((reference, series)) = restore {
        input.restore(first - 1, reference, series.to_vec(), &view);
        input.advance_to(first);
        input.flush();
        worker.step_while(|| probe.less_than(&first));
        // The features of the checkpoint's epoch, the run had emitted already.
        assert!(
            sink.borrow().is_empty(),
            "a restore emitted {} changes at the checkpoint's epoch",
            sink.borrow().len()
        );
    }
    feed_steps(
        worker,
        &mut input,
        &probe,
        events,
        plan,
        from..plan.steps.len(),
    );
    by_epoch(&sink)
}

/// The changes collected in `sink`, per epoch, in key order.
fn by_epoch(sink: &dataflow::Changes) -> BTreeMap<Epoch, Vec<(Key, FeatureVec)>> {
    let mut out: BTreeMap<Epoch, Vec<(Key, FeatureVec)>> = BTreeMap::new();
    for (epoch, key, vec) in sink.borrow().iter() {
        out.entry(*epoch).or_default().push((*key, vec.clone()));
    }
    for v in out.values_mut() {
        v.sort_unstable_by_key(|c| c.0);
    }
    out
}

/// Feeds the plan's steps `steps` into `input`, one epoch at a time, each run to completion.
fn feed_steps(
    worker: &mut timely::worker::Worker,
    input: &mut dataflows::input::FeatureInput,
    probe: &timely::dataflow::operators::probe::Handle<Epoch>,
    events: &[dataflows::Event],
    plan: &stepping::Plan,
    steps: std::ops::Range<usize>,
) {
    for s in steps {
        let step = &plan.steps[s];
        input.advance_to(step.epoch);
        for &i in &step.events {
            let _ = input.apply(&events[i as usize]);
        }
        let next = plan.steps.get(s + 1).map_or(step.epoch + 1, |n| n.epoch);
        input.advance_to(next);
        input.flush();
        worker.step_while(|| probe.less_than(&next));
    }
}

/// A checkpoint is the series records the features operator exports plus the input stage's
/// reference data: restored into a new dataflow, every later epoch's changes are those of the
/// run that was never interrupted, whatever epoch the checkpoint was taken at.
#[test]
fn a_restored_checkpoint_continues_like_the_uninterrupted_run() {
    for (seed, period) in [
        (3, PeriodKind::Day),
        (4, PeriodKind::Day),
        (105, PeriodKind::Week),
    ] {
        let spec = common::small_spec(period);
        let clock = common::clock_for(period);
        let events = common::random_events(seed, period, 300);
        let plan = stepping::plan(&clock, 0, &events, None);
        let steps = plan.steps.len();
        let mut checked = 0;
        for cut in [steps / 5, steps / 2, steps - steps / 5] {
            let first = plan.steps[cut].epoch;
            let (events, plan, spec) = (events.clone(), plan.clone(), spec.clone());
            let (whole, restored, exported) = timely::execute_directly(move |worker| {
                let whole = continue_from(worker, clock, &spec, &events, &plan, 0, None);
                // The run up to the cut, then its checkpoint.
                let mut input = dataflows::input::FeatureInput::new(clock, &spec);
                let (probe, _, view) =
                    dataflow::build(worker, &mut input, &spec, Emission::EveryEpoch);
                feed_steps(worker, &mut input, &probe, &events, &plan, 0..cut);
                let mut series = Vec::new();
                view.export(|k, r, a| series.push((k, r, a)));
                let reference = input.reference();
                let restored = continue_from(
                    worker,
                    clock,
                    &spec,
                    &events,
                    &plan,
                    cut,
                    Some((&reference, &series)),
                );
                (whole, restored, series.len())
            });
            let expected: BTreeMap<_, _> = whole.into_iter().filter(|(e, _)| *e >= first).collect();
            assert!(exported > 0, "seed {seed}: nothing exported at step {cut}");
            assert_eq!(
                restored.len(),
                expected.len(),
                "seed {seed}, cut {cut}: epochs with changes"
            );
            for (epoch, changes) in &expected {
                assert_eq!(
                    restored.get(epoch),
                    Some(changes),
                    "seed {seed}, cut {cut}: changes at epoch {epoch}"
                );
            }
            checked += expected.len();
        }
        assert!(
            checked > 10,
            "seed {seed}: too few epochs compared ({checked})"
        );
    }
}
