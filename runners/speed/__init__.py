"""Training speed: the dataset's token count before a run (`tokencount`), the `fast` recipe's shape
for a GPU and a model (`fastplan`), the time estimate and its calibration table (`estimate`), the
true throughput and MFU (`throughput`), and the runner's glue over them (`trainprep`)."""
