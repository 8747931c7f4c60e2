//! The feature dataflow (the `dataflows` crate's) built on one timely worker, as the streaming
//! driver's workers build it, with the buffer its changed series are collected in.

use std::cell::RefCell;
use std::rc::Rc;

use dataflows::dataflow::StateView;
use dataflows::emit::Emission;
use dataflows::input::FeatureInput;
use dataflows::{Epoch, FeatureSpec, FeatureVec, Key};
use differential_dataflow::VecCollection;
use timely::dataflow::operators::probe::Handle;

/// Changed series collected from the dataflow on one worker, with the epoch they changed in.
pub type Changes = Rc<RefCell<Vec<(Epoch, Key, FeatureVec)>>>;

/// Builds the feature dataflow on `worker` from `input`'s sessions, emitting as `emission` says;
/// returns its probe, the buffer its changed series (insertions only) are collected in, and
/// its state view.
pub fn build(
    worker: &mut timely::worker::Worker,
    input: &mut FeatureInput,
    spec: &FeatureSpec,
    emission: Emission,
) -> (Handle<Epoch>, Changes, StateView) {
    let sink: Changes = Rc::default();
    let mut size = StateView::default();
    let probe = worker.dataflow::<Epoch, _, _>(|scope| {
        let features: VecCollection<'_, Epoch, (Key, FeatureVec)>;
        (features, size) =
            dataflows::dataflow::features_with(scope, input.inputs_mut(), spec, emission);
        let sink = Rc::clone(&sink);
        features
            .inspect_batch(move |_time, batch| {
                let mut sink = sink.borrow_mut();
                for ((key, vec), time, diff) in batch {
                    if *diff > 0 {
                        sink.push((*time, *key, vec.clone()));
                    }
                }
            })
            .probe()
            .0
    });
    (probe, sink, size)
}
