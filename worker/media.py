"""Media engine (SPEC §5). PLACEHOLDER: the media helper replaces this file.

Contract (other modules code against it):

    async def probe(path: Path, *, timeout: float = 60.0) -> MediaInfo
    def container_for(video_codec: str) -> Container  # .extension, .content_type
    async def merge(request: MergeRequest, *, on_progress: ProgressCallback | None = None)
        -> MergeResult
"""
