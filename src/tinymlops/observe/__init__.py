"""Observability without raw data: the telemetry recorder, input sketches, local differential
privacy and energy meters (the device half, in the edge closure: numpy, datasketches and the
standard library), and drift detection (the server half).

Modules, imported one by one (this package imports none of them, so a device that loads the
recorder never loads the drift tests' scipy):

* :mod:`tinymlops.observe.sketches` — :class:`InputProfile`: per-feature KLL sketches and moments,
  a fixed random projection, predicted-class and confidence histograms; mergeable.
* :mod:`tinymlops.observe.privacy` — randomized response, the discrete Laplace mechanism, the
  estimators that de-bias them, and the device's :class:`EpsilonBudget`.
* :mod:`tinymlops.observe.energy` — :class:`EnergyMeter`: Intel RAPL or CPU time × the profile's power.
* :mod:`tinymlops.observe.memory` — the process's peak resident memory.
* :mod:`tinymlops.observe.policy` — :class:`TelemetryPolicy`, the bundle manifest's telemetry table.
* :mod:`tinymlops.observe.recorder` — :class:`TelemetryRecorder`, the runtime middleware that
  fills a :class:`~tinymlops.spec.telemetry.TelemetryWindow`.
* :mod:`tinymlops.observe.windows` — :func:`merge_windows`: two exact windows as one coarser one.
* :mod:`tinymlops.observe.drift_tests` / ``drift_inputs`` — drift tests between profiles (server).
"""
