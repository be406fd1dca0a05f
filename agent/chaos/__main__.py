from agent.chaos.cli import main

main()
