"""Generated spectrograms of the first validation videos as 22,050 Hz wav files, for listening."""
from i2a.data.clips import mel_spec_from_config
from i2a.pipeline.jobs import start_job
from i2a.sampling.samples import vocode_samples

start_job(snakemake)
vocode_samples(snakemake.input.mels, snakemake.input.names, snakemake.output[0], snakemake.params.kind,
               mel_spec_from_config(snakemake.params.audio), (snakemake.input.vocoder or [None])[0],
               listen_videos=snakemake.params.listen_videos, listen_samples=snakemake.params.listen_samples)
