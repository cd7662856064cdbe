import gymnasium

gymnasium.register(id="Compress-v0", entry_point="envs.compress_env:CompressEnv")
