from setuptools import find_packages, setup

setup(
    name="vfinfer",
    version="0.1.0",
    description="Fast, dependable inference for Varifocal-Net chromosome classification",
    python_requires=">=3.9",
    packages=find_packages(include=["vfinfer", "vfinfer.*"]) + ["vfinfer_export"],
    package_dir={"vfinfer_export": "export"},
    package_data={"vfinfer": ["demo_model/*.onnx", "demo_model/*.json",
                              "demo_seg_model/*.onnx", "demo_seg_model/*.json",
                              "serve/static/*.html"],
                  "vfinfer.io": ["templates/*.j2"]},
    install_requires=[
        "numpy>=1.23",
        "opencv-python-headless>=4.8",
        "onnxruntime>=1.17",
        "click>=8.1",
        "scipy>=1.10",  # optimal dispatch (linear_sum_assignment)
        "jinja2>=3.1",  # the case report, OUT/<case>/report.html
        "pillow>=9.1",  # indexed PNGs: a karyogram with red marks (vfinfer.util.images)
    ],
    extras_require={
        # torch>=2.4 is met by the 2.13.0 CPU wheel when it is installed first (see README)
        # vfinfer fp16 / quantize (vfinfer.tools): onnxruntime.quantization is built on onnx
        # vfinfer eval-seg: COCO mask AP (pycocotools)
        "tools": ["onnx>=1.16", "onnxconverter-common>=1.14", "pycocotools>=2.0.7"],
        "export": ["torch>=2.4", "onnx>=1.16", "onnxscript>=0.1", "onnxconverter-common>=1.14",
                   "pycocotools>=2.0.7"],
        "gpu": ["tensorrt>=10.0", "cuda-python>=12.6.1"],
        "openvino": ["openvino>=2024.0"],
        # the tests' clients: selenium drives Debian's chromium on the review page,
        # tritonclient speaks the Open Inference Protocol (tests/test_oip.py)
        "dev": ["pytest>=8", "ruff>=0.5", "selenium>=4.20", "tritonclient[http]>=2.40"],
        # vfinfer serve (vfinfer.serve) and its client (vfinfer.client)
        # (pydantic 2.7: the request models' per-field number-to-string coercion)
        "serve": ["fastapi>=0.110", "pydantic>=2.7", "uvicorn>=0.27",
                  "python-multipart>=0.0.9", "prometheus-client>=0.19", "httpx>=0.27"],
        # vfinfer run --ray (vfinfer.cluster)
        "ray": ["ray[data]>=2.9"],
    },
    entry_points={"console_scripts": ["vfinfer=vfinfer.cli:main"]},
)
