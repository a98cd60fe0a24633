"""The routes of ``service.app.LesionSeg``, one module per family: each parses what it is given,
calls the engine (:mod:`lesionseg.pipeline.engine`) and encodes the answer.

- :mod:`~service.routes.respond`: admission control and the error -> status mapping, for all;
- :mod:`~service.routes.decode`: uploads -> frames (one file, or the DICOM files of a series);
- :mod:`~service.routes.segment`: ``/segment``, ``/segment/boxes``, ``/segment/overlay``;
- :mod:`~service.routes.volumes`: ``/segment/dicom-seg``, ``/segment/nifti``,
  ``/segment/propagate``, ``/segment/dicom-sr`` and the jobs' ``segment_to_reports``;
- :mod:`~service.routes.preview`: ``/segment/preview``.
"""
