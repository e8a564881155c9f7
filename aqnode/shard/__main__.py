from aqnode.shard.process import main

main()
