"""Benchmarks of nc-probe (run as ``python -m bench.<name>``).

``python -m bench.peer`` times nc-probe's collapse metrics (``classes=[]``) against rhubarbwu/neural-collapse on the
same float64 features in one process (N = 200k, d = 512, C = 100 and 1000; goal: nc-probe <= half their time), with
a torch X^T X baseline and the shared metrics side by side. Their package is imported at run time, never copied
here: ``pip install git+https://github.com/rhubarbwu/neural-collapse.git`` (it needs scipy), or ``--peer-path DIR``
/ ``NC_PEER_PATH=DIR`` for a folder holding its ``neural_collapse`` package.
"""
