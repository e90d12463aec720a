from aethergraph.adapters.cli import main

main()
