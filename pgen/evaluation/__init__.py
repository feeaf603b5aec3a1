"""Measuring generators by playing their policies: the metrics (`metrics`), the data of a fit with its
returns measured against the reference (`training_data`), the baselines (`baselines`), the evaluation
(`evaluate`) and its table and PNG (`report`), the calibration of the return condition
(`calibration`), the choice among candidates (`selection`), and `pgen loop`'s promotion gate (`gate`)."""
