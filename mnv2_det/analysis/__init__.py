"""Analysis libraries: BatchNorm audits and recalibration, model statistics, drawing."""
