import fsspec


def test_s3_server_round_trip(s3_server, s3_bucket):
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3_server.storage_options)
    with fs.open(f"{s3_bucket}/hello.txt", "wb") as f:
        f.write(b"octave")
    assert fs.cat(f"{s3_bucket}/hello.txt") == b"octave"
