#!/bin/sh
cat /app/message.txt
