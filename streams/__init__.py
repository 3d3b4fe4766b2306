"""Media sources as a leaf library (it depends on no other package of vmr).

``source`` (the :class:`~streams.source.Source` contract and the common spec),
``registry`` (kinds by name; the discriminated union of specs), ``media``
(Frame, AudioChunk), ``errors``, ``bridge`` (the thread-to-loop hand-over),
``decode`` (the decode loop of recordings), ``timeline`` (stream time),
``audio``, ``sampler``; one module per kind: ``file``, ``rtsp``,
``segments``, ``whip``.
"""
