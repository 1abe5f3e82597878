FROM scratch AS a
COPY --from=c /f /f
FROM scratch AS b
COPY --from=a /f /f
FROM scratch AS c
COPY \
  --from=b /f /f
