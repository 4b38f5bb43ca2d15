from zbridge_daemon.entry import main

main()
