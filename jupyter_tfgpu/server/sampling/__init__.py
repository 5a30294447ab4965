"""One sampler per server: GPU readings off the event loop, history, fan-out."""
