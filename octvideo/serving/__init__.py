"""A trained network as a registered MLflow model: its files (:mod:`.model_files`: weights, build
arguments, label map, clip settings; no pickled code), and the pyfunc that classifies uint8 clips
with it (:mod:`.classifier`, logged from code by :mod:`.classifier_code`)."""
