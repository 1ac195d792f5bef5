"""Running trained detectors, whatever their format: `detector.load_detector`."""
