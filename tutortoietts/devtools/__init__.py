"""Development tools: benchmarks, profiling, the reference runner, fidelity measures. Never imported by the runtime."""
