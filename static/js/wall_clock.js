// The run page's wall-time axis. No batch carries a timestamp; each carries `samples_per_s`, the
// training throughput measured by the wall clock over its chunk (evaluation passes and the recording
// itself included). So a batch took batch_size / samples_per_s seconds, and a recorded step's wall time
// is the sum over the batches up to it: seconds since the first batch began, accurate to the chunk.
// Between two recorded points (downsampled or record_every > 1) every batch of the gap is counted at the
// later point's throughput.

export function createWallClock(batchSize) {
  const steps = []; // ascending recorded steps
  const secs = []; // wall seconds at the end of each
  let rate = null; // the last known samples per second

  // a stats answer or increment ({steps, columns.samples_per_s}), after those already added
  function add(s) {
    if (!batchSize) return;
    const sps = s.columns?.samples_per_s ?? [];
    s.steps.forEach((step, i) => {
      if (steps.length && step <= steps.at(-1)) return;
      if (sps[i] > 0 && Number.isFinite(sps[i])) rate = sps[i];
      if (rate === null) return; // no throughput yet: this point gets no time (it is drawn when one comes)
      const batches = steps.length ? step - steps.at(-1) : step + 1;
      steps.push(step);
      secs.push((secs.at(-1) ?? 0) + (batches * batchSize) / rate);
    });
  }

  // seconds at `step`: interpolated between recorded points, extrapolated at the last rate past them
  function at(step) {
    if (!steps.length) return null;
    if (step >= steps.at(-1)) return secs.at(-1) + ((step - steps.at(-1)) * batchSize) / rate;
    if (step <= steps[0]) return (secs[0] * (step + 1)) / (steps[0] + 1);
    let lo = 0;
    let hi = steps.length - 1;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (steps[mid] <= step) lo = mid;
      else hi = mid;
    }
    return secs[lo] + ((secs[hi] - secs[lo]) * (step - steps[lo])) / (steps[hi] - steps[lo]);
  }

  return { add, at, available: () => Boolean(batchSize) };
}
