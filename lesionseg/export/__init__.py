"""Export the SAM encoder/decoder and the YOLO detector to ONNX (:mod:`.onnx`) and TensorRT
(:mod:`.tensorrt`), each checked against PyTorch (:mod:`.checks`) and recorded beside the files."""
